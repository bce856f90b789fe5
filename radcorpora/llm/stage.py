"""An LLM stage as one small class, in the manner of curator: how a row becomes a request, how a
reply becomes rows (or a reject), what the reply looks like, how long it runs, and what the
offline stand-in answers. `estimate`, the offline provider, usage accounting (by stage name) and
the card all read the stage, so there are no per-corpus tables to keep in step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from radcorpora.llm.request import LLMRequest
from radcorpora.llm.runner import CallResult, Parser
from radcorpora.schemas.common import Reject

Row = TypeVar("Row")


class LLMStage(ABC, Generic[Row]):
    """Subclass per stage; instances hold the stage's prompt and settings."""

    name: ClassVar[str]  # the requests' `stage`; usage and failures are counted under it
    description: ClassVar[str] = ""
    output: ClassVar[type[BaseModel] | None] = None  # structured reply model, when the reply is JSON
    expected_output_tokens: ClassVar[int] = 512  # for estimates (reasoning models bill thinking as output)

    @abstractmethod
    def prompt(self, row: Row) -> LLMRequest:
        """The request for one row (text, images, sampling, output format)."""

    @abstractmethod
    def parse(self, row: Row, result: CallResult) -> list[Any] | Reject:
        """Rows made from a reply, or a reject saying why not; failed calls are rejects too."""

    def parser(self) -> Parser | None:
        """How the runner reads a reply before `parse` (None: the text as is)."""
        return None

    @staticmethod
    def offline(request: LLMRequest) -> str:
        """Deterministic stand-in answer (demo and tests; NOT a model)."""
        raise NotImplementedError

    def run(self, session: Any, model: str, rows: Sequence[Row]) -> list[tuple[Row, list[Any] | Reject]]:
        """Send (cache first) one request per row to `model`; each row with what `parse` made of it."""
        results = session.run(model, [self.prompt(r) for r in rows], self.parser())
        return [(row, self.parse(row, result)) for row, result in zip(rows, results)]


def offline_responders(stages: Sequence[type[LLMStage]]) -> dict[str, Any]:
    """stage name -> stand-in, for the offline provider."""
    return {stage.name: stage.offline for stage in stages}
