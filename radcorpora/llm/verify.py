"""Verification by one or more models: kept under this name for its callers; the code lives in
`radcorpora.llm.audit` (audits with k models, Cohen's/Fleiss' kappa, the adjudication queue)."""

from radcorpora.llm.audit import (
    DECISIONS,
    DECISIONS_FILE,
    FAILURES_FILE,
    QUEUE_FILE,
    AdjudicationError,
    Outcome,
    QueueEntry,
    Settled,
    Verdict,
    agreement,
    cohen_kappa,
    fleiss_kappa,
    read_decisions,
    read_queue,
    route,
    settle,
)

__all__ = ["DECISIONS", "DECISIONS_FILE", "FAILURES_FILE", "QUEUE_FILE", "AdjudicationError", "Outcome", "QueueEntry",
           "Settled", "Verdict", "agreement", "cohen_kappa", "fleiss_kappa", "read_decisions", "read_queue", "route",
           "settle"]
