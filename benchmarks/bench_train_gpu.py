"""GPU throughput of reference training: LoRA steps of a Qwen2.5-VL-3B-shaped model (random init
from Qwen2.5-VL-3B-Instruct's published dimensions, no download) through `radcorpora`'s trainer
(`sft.train`: the batch plan, our collator and assistant masks, transformers' Trainer), next to
the same steps through a plain TRL SFTTrainer run (assistant-only loss, TRL's own vision
collator), in the same process, on the same rows: samples/s, tokens/s and peak GPU memory at a
fixed sequence length, and their ratio.

Both load the base in bf16 with LoRA r16 / alpha 16 on both towers (the rad-ace targets), AdamW,
lr 1e-4, batch `--batch-size`, no accumulation; every row is the same conversation (one image of
`--image-side` pixels, a fixed prompt and answer) with its own random image, so every batch has
the same length. Attention: sdpa, or flash-attention 2 where `flash_attn` is installed (`--attn`).

Needs a CUDA GPU: without one it prints that it was not run and exits 0. `--shape tiny` runs the
same code on the tiny model (CPU allowed), to check the script itself.

    python benchmarks/bench_train_gpu.py --steps 20 --batch-size 4 --json gpu.json
    python benchmarks/bench_train_gpu.py --shape tiny --steps 6 --batch-size 2 --image-side 56
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

QWEN25_VL_3B_TEXT = {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                     "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 128000,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}}
QWEN25_VL_3B_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 2048, "window_size": 112,
                       "fullatt_block_indexes": [7, 15, 23, 31], "in_channels": 3}
PROMPT = "Describe the findings in this image and name the imaging modality."


def answer_text(words: int) -> str:
    vocabulary = ["left", "right", "upper", "lower", "lobe", "nodule", "opacity", "effusion", "normal", "heart"]
    return " ".join(vocabulary[i % len(vocabulary)] for i in range(words)) + "."


def build_base(folder: Path, shape: str, image_side: int, words: int) -> Path:
    """A random-init checkpoint of the shape, with a tokenizer trained on the benchmark's text."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from radcorpora.reference_models.models import (
        CHAT_TEMPLATE,
        SPECIAL_TOKENS,
        ImageOnlyQwen25VLProcessor,
        build_tiny,
        tiny_image_processor,
        train_tokenizer,
    )

    texts = [PROMPT, answer_text(words)] * 50
    if shape == "tiny":
        return build_tiny(folder, texts, image_side=image_side)
    tokenizer = train_tokenizer(texts, vocab_size=2000)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = {**QWEN25_VL_3B_TEXT, "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"]}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=QWEN25_VL_3B_VISION, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"], bos_token_id=ids["<|endoftext|>"],
                              eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(folder)
    ImageOnlyQwen25VLProcessor(tiny_image_processor(image_side), tokenizer, chat_template=CHAT_TEMPLATE).save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def rows(n: int, image_side: int, words: int) -> list[dict]:
    """The same conversation n times, each with its own random image (so every batch is as long)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    answer = answer_text(words)
    return [{"id": f"r{i}", "image": Image.fromarray(rng.integers(0, 255, (image_side, image_side, 3), dtype=np.uint8)),
             "conversations": [{"from": "human", "value": f"<image>\n{PROMPT}"}, {"from": "gpt", "value": answer}]}
            for i in range(n)]


def attention(choice: str) -> str:
    if choice != "auto":
        return choice
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") and torch.cuda.is_available() else "sdpa"


def _peak(reset: bool = False) -> float | None:
    if not torch.cuda.is_available():
        return None
    if reset:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return None
    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)


def summary(step_ends: list[float], warmup: int, batch_size: int, tokens_per_sample: int, peak: float | None) -> dict:
    times = [b - a for a, b in itertools.pairwise(step_ends)][warmup:]
    median = statistics.median(times)
    return {"steps_timed": len(times), "median_step_seconds": round(median, 4),
            "samples_per_second": round(batch_size / median, 2),
            "tokens_per_second": round(batch_size * tokens_per_sample / median, 1), "peak_gpu_memory_gib": peak}


def run_ours(base: Path, data: list[dict], out: Path, args, attn: str) -> dict:
    from transformers import AutoModelForImageTextToText

    from radcorpora.reference_models import sft
    from radcorpora.reference_models.models import load_processor

    def load_with_attention(path, dtype=None):  # sft loads through models.load_model, which takes no attention choice
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype or torch.float32, attn_implementation=attn)
        return model, load_processor(path)

    sft.load_model = load_with_attention
    config = sft.SFTConfig(method="lora", lora_r=16, lora_alpha=16, learning_rate=1e-4, batch_size=args.batch_size,
                           grad_accum=1, max_steps=args.steps, warmup_steps=0, weight_decay=0.0, max_length=32768,
                           save_every=10 ** 9, log_every=1, bf16=torch.cuda.is_available() or args.shape == "tiny",
                           gradient_checkpointing=args.gradient_checkpointing)
    _peak(reset=True)
    result = sft.train(base, data, out, config)
    peak = _peak()
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    tokens = round(result.tokens_per_second * result.seconds / (result.steps * args.batch_size))
    return {**summary([line["seconds"] for line in logged], args.warmup, args.batch_size, tokens, peak),
            "tokens_per_sample": tokens, "first_loss": result.first_loss, "last_loss": result.last_loss}


def run_trl(base: Path, data: list[dict], out: Path, args, attn: str) -> dict:
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForImageTextToText, PrinterCallback, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from radcorpora.reference_models.models import load_processor
    from radcorpora.reference_models.sft import TARGET_MODULES

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.ends.append(time.time())

    processor = load_processor(base)
    dataset = datasets.Dataset.from_list([{
        "images": [row["image"]],
        "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]},
                     {"role": "assistant", "content": [{"type": "text", "text": row["conversations"][1]["value"]}]}]}
        for row in data])
    _peak(reset=True)
    bf16 = torch.cuda.is_available() or args.shape == "tiny"
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.bfloat16 if bf16 else torch.float32,
                                                        attn_implementation=attn)
    clock = Clock()
    trainer = SFTTrainer(
        model=model, processing_class=processor, train_dataset=dataset, callbacks=[clock],
        peft_config=LoraConfig(r=16, lora_alpha=16, target_modules=TARGET_MODULES),
        args=SFTConfig(output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                       learning_rate=1e-4, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0, bf16=bf16,
                       use_cpu=not torch.cuda.is_available(), gradient_checkpointing=args.gradient_checkpointing,
                       assistant_only_loss=True, max_length=None, logging_steps=1, save_strategy="no",
                       report_to="none", disable_tqdm=True, seed=0))
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    peak = _peak()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    tokens = round(logged[0]["num_tokens"] / args.batch_size)  # TRL's count after step 1 (non-padding)
    return {**summary(clock.ends, args.warmup, args.batch_size, tokens, peak), "tokens_per_sample": tokens,
            "first_loss": logged[0]["loss"], "last_loss": logged[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=["3b", "tiny"], default="3b")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="First steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--image-side", type=int, default=448, help="448: 256 image tokens")
    parser.add_argument("--answer-words", type=int, default=200)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--attn", default="auto", choices=["auto", "sdpa", "flash_attention_2", "eager"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.shape == "3b" and not torch.cuda.is_available():
        print("bench_train_gpu: no CUDA GPU on this machine; not run (use --shape tiny to check the script on CPU)")
        return
    attn = attention(args.attn)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        built = time.time()
        base = build_base(tmp / "base", args.shape, args.image_side, args.answer_words)
        data = rows(args.steps * args.batch_size, args.image_side, args.answer_words)
        report = {"shape": args.shape, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                  "torch": torch.__version__, "attention": attn, "batch_size": args.batch_size, "steps": args.steps,
                  "image_side": args.image_side, "answer_words": args.answer_words,
                  "gradient_checkpointing": args.gradient_checkpointing, "build_seconds": round(time.time() - built, 1)}
        report["radcorpora"] = run_ours(base, data, tmp / "ours", args, attn)
        report["trl_sft"] = run_trl(base, data, tmp / "trl", args, attn)
    ours, trl = report["radcorpora"], report["trl_sft"]
    report["ratio_samples_per_second"] = round(ours["samples_per_second"] / trl["samples_per_second"], 3)
    if ours["peak_gpu_memory_gib"] and trl["peak_gpu_memory_gib"]:
        report["ratio_peak_memory"] = round(ours["peak_gpu_memory_gib"] / trl["peak_gpu_memory_gib"], 3)
    print(json.dumps(report, indent=2))
    print("\n| run | samples/s | tokens/s | median step s | peak GPU GiB |\n| --- | --- | --- | --- | --- |")
    for name, side in (("radcorpora (sft.train)", ours), ("TRL SFTTrainer", trl)):
        print(f"| {name} | {side['samples_per_second']} | {side['tokens_per_second']} | {side['median_step_seconds']} | "
              f"{side['peak_gpu_memory_gib']} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
