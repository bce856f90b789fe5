"""Training throughput of a reference model: samples/s, tokens/s and peak memory.

CPU (default): the tiny offline model on the demo radimagenet-vqa build, as `radcorpora check`
trains it (`sft.train`: transformers' Trainer over the batch plan; no alignment rows, so every
step is a question step). `--model qwen2.5-vl-3b-shape`: bare LoRA steps (no Trainer, no
collation) of a random-init model with Qwen2.5-VL-3B's configuration (no download), for a GPU;
benchmarks/bench_train_gpu.py measures the same shape through `sft.train` next to TRL's
SFTTrainer.

    python benchmarks/bench_reference_train.py --steps 100 --json out.json
    python benchmarks/bench_reference_train.py --model qwen2.5-vl-3b-shape --steps 20 --batch-size 2
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import tempfile
import time
from pathlib import Path

import torch


def demo_build(folder: Path) -> Path:
    from radcorpora.corpora.radimagenet_vqa.build import make_settings
    from radcorpora.demo.radimagenet import write_demo_radimagenet
    from radcorpora.registry import build

    write_demo_radimagenet(folder / "source", images_per_class=12)
    build("radimagenet-vqa", {"source": folder / "source"}, make_settings(benchmark_images=100), folder / "build")
    return folder / "build"


def bench_tiny(steps: int, preset: str) -> dict:
    from radcorpora.corpora.radimagenet_vqa.spec import SPEC as RADIMAGENET_VQA
    from radcorpora.reference_models.data import training_examples, training_texts
    from radcorpora.reference_models.models import build_tiny
    from radcorpora.reference_models.sft import PRESETS, train

    with tempfile.TemporaryDirectory() as tmp:
        build = demo_build(Path(tmp))
        base = build_tiny(Path(tmp) / "tiny", training_texts(build, RADIMAGENET_VQA.evaluation))
        examples = training_examples(build, RADIMAGENET_VQA.evaluation)
        config = PRESETS[preset].model_copy(update={"max_steps": steps, "save_every": 10 ** 9})
        results = {}
        for variant, text_only in (("image", False), ("text-only", True)):
            result = train(base, examples, Path(tmp) / variant, config, text_only=text_only)
            results[variant] = {"samples_per_second": result.samples_per_second,
                                "tokens_per_second": result.tokens_per_second, "seconds": result.seconds,
                                "steps": result.steps, "batch_size": config.batch_size, "method": config.method}
    return results


def qwen25_vl_3b_shape():
    """Qwen2.5-VL-3B-Instruct's published configuration, at random init."""
    from transformers import Qwen2_5_VLConfig

    text = {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
            "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 128000,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            "tie_word_embeddings": True}
    vision = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 2048, "window_size": 112,
              "fullatt_block_indexes": [7, 15, 23, 31], "in_channels": 3}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True)


def bench_3b(steps: int, batch_size: int, image_side: int, answer_tokens: int) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    from radcorpora.reference_models.sft import PRESETS

    device = "cuda"
    config = qwen25_vl_3b_shape()
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    preset = PRESETS["rad-ace"]
    model = get_peft_model(model, LoraConfig(r=preset.lora_r, lora_alpha=preset.lora_alpha,
                                             target_modules=preset.target_modules))
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=preset.learning_rate)
    grid = image_side // 14
    image_tokens = grid * grid // 4
    prompt = 32
    seq = 1 + image_tokens + 1 + prompt + answer_tokens
    rng = random.Random(0)
    input_ids = torch.tensor([[rng.randrange(1000, 150000) for _ in range(seq)] for _ in range(batch_size)], device=device)
    input_ids[:, 1:1 + image_tokens] = config.image_token_id
    input_ids[:, 0] = config.vision_start_token_id
    input_ids[:, 1 + image_tokens] = config.vision_end_token_id
    labels = input_ids.clone()
    labels[:, :seq - answer_tokens] = -100
    mm = (input_ids == config.image_token_id).long()
    pixel_values = torch.randn(batch_size * grid * grid, 3 * 2 * 14 * 14, device=device, dtype=torch.bfloat16)
    grid_thw = torch.tensor([[1, grid, grid]] * batch_size, device=device)
    torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(steps):
        torch.cuda.synchronize()
        t = time.time()
        loss = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels,
                     pixel_values=pixel_values, image_grid_thw=grid_thw, mm_token_type_ids=mm).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        torch.cuda.synchronize()
        times.append(time.time() - t)
    median = sorted(times[2:])[len(times[2:]) // 2]
    return {"device": torch.cuda.get_device_name(), "batch_size": batch_size, "sequence_tokens": seq,
            "image_side": image_side, "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "median_step_seconds": round(median, 4), "samples_per_second": round(batch_size / median, 2),
            "tokens_per_second": round(batch_size * seq / median, 1),
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2), "dtype": "bfloat16",
            "gradient_checkpointing": True}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny", choices=["tiny", "qwen2.5-vl-3b-shape"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--preset", default="tiny-check")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--image-side", type=int, default=448)
    parser.add_argument("--answer-tokens", type=int, default=256)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    started = time.time()
    if args.model == "tiny":
        results = bench_tiny(args.steps, args.preset)
    else:
        results = bench_3b(args.steps, args.batch_size, args.image_side, args.answer_tokens)
    report = {"model": args.model, "results": results, "threads": torch.get_num_threads(),
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
              "seconds": round(time.time() - started, 1)}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
