"""Candidate reports sampled from a local transformers checkpoint (`--sampler hf:PATH` of
`radcorpora dpo ct-reasoning`).

Each candidate is its own generate call seeded with `dpo.candidate_seed(seed, scan, index,
attempt)`, so a candidate does not depend on N, on the other scans or on batching: the same seed
gives the same candidates. An empty sample is asked again with the next attempt's seed, at most
`retries` times (bounded, unlike an endless retry loop). The prompt is the one the pairs carry:
the scan's stored slices as images, then the task, through the checkpoint's chat template.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from radcorpora.corpora.ct_reasoning import dpo
from radcorpora.reference_models.collate import to_messages
from radcorpora.reference_models.models import load_model


class SamplerError(dpo.DpoError):
    """The checkpoint cannot be used to sample (not a folder, not loadable)."""


def load(path: str) -> tuple[Any, Any]:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise SamplerError(f"--sampler hf:{path}: {folder} is not a checkpoint folder (no config.json)")
    try:
        return load_model(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise SamplerError(f"--sampler hf:{path}: cannot load the checkpoint ({type(exc).__name__}: "
                           f"{str(exc)[:200]})") from None


@torch.no_grad()
def sample_one(model: Any, processor: Any, case: dpo.Case, seed: int, temperature: float, max_tokens: int) -> str:
    """One candidate report for `case`, sampled with `seed` (greedy at temperature 0)."""
    images = [Image.open(io.BytesIO(s["image"]["bytes"])).convert("RGB") for s in case.slices]
    messages = to_messages(dpo.prompt_turns(case), images)
    messages.insert(0, {"role": "system", "content": [{"type": "text", "text": dpo.SYSTEM_TEXT}]})
    batch = processor.apply_chat_template([messages], tokenize=True, return_dict=True, return_tensors="pt",
                                          add_generation_prompt=True)
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0} if temperature > 0 else {"do_sample": False}
    output = model.generate(**batch, max_new_tokens=max_tokens, **sampling)
    new = output[0, batch["input_ids"].shape[1]:]
    return processor.tokenizer.decode(new, skip_special_tokens=True).strip()


def sample_local(path: str, cases: dict[str, dpo.Case], settings: dpo.DpoSettings
                 ) -> tuple[dpo.Candidates, list[tuple[str, int]]]:
    """`settings.n` candidates per scan from the checkpoint at `path`; returns the candidates (each
    with its seed and attempt) and the (scan, index) samples still empty after every retry."""
    model, processor = load(path)
    model.eval()
    got: dict[tuple[str, int], dict[str, Any]] = {}
    failed: list[tuple[str, int]] = []
    for scan in sorted(cases):
        for index in range(settings.n):
            for attempt in range(settings.retries + 1):
                seed = dpo.candidate_seed(settings.seed, scan, index, attempt)
                text = sample_one(model, processor, cases[scan], seed, settings.temperature, settings.max_tokens)
                if text:
                    got[(scan, index)] = {"report": text, "index": index, "attempt": attempt, "seed": seed}
                    break
            else:
                failed.append((scan, index))
    return dpo.collect(cases, got, settings.n), failed
