"""The model families `--model hf:PATH` is tested with, named without importing torch (the CLI's
help text reads them at start-up)."""

FAMILY_NAMES = {"qwen2_5_vl": "Qwen2.5-VL", "qwen3_vl": "Qwen3-VL", "llava_onevision": "LLaVA-OneVision",
                "mllama": "Llama-3.2-Vision (Mllama)", "idefics3": "Idefics3/SmolVLM"}
MODEL_HELP = ("`tiny` (a tiny random-init Qwen2.5-VL built from the corpus) or `hf:<local checkpoint path>` of a "
              f"{', '.join(FAMILY_NAMES.values())} checkpoint")
