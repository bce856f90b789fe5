"""Reference models: a tiny Qwen2.5-VL built fully offline, and real checkpoints from disk.

`tiny` is the Qwen2.5-VL architecture at toy size (random init), with a byte-level BPE tokenizer
trained locally on the corpus text, Qwen's special tokens and a chat template that marks
assistant turns for assistant-only loss, and an image processor that needs no torchvision. It is
saved and reloaded like any checkpoint, so every build can be checked on a CPU in minutes.
`hf:<path>` loads a real checkpoint from disk: Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision,
Llama-3.2-Vision (Mllama) or Idefics3/SmolVLM, each tested with a tiny checkpoint of its family
(reference_models/families.py writes one offline).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
)
from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.processing_utils import ProcessorMixin

from radcorpora.reference_models.model_families import FAMILY_NAMES, MODEL_HELP
from radcorpora.store.atomic import replace_folder

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen-style turns; assistant text sits inside {% generation %} so the tokenizer can return the
# mask of assistant tokens (the only tokens in the loss).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ message['content'] }}<|im_end|>{% endif %}"
    "{% else %}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>{% endgeneration %}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}<|im_end|>{% endif %}"
    "{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ImageOnlyQwen25VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor without the video processor (which requires torchvision)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **_: Any):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3-VL processor without the video processor (which requires torchvision)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **_: Any):
        # the parent sets its tokens up and hands (image, tokenizer, video) to ProcessorMixin, which
        # keeps only the attributes this signature names: the video processor is dropped
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template)


class ImageOnlyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
    """LLaVA-OneVision processor without the video processor (which requires torchvision)."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, num_image_tokens: int | None = None,
                 vision_feature_select_strategy: str | None = None, chat_template: str | None = None,
                 image_token: str = "<image>", video_token: str = "<video>", vision_aspect_ratio: str = "anyres_max_9",
                 **_: Any):
        super().__init__(image_processor, tokenizer, None, num_image_tokens=num_image_tokens,
                         vision_feature_select_strategy=vision_feature_select_strategy, chat_template=chat_template,
                         image_token=image_token, video_token=video_token, vision_aspect_ratio=vision_aspect_ratio)


# model_type -> the processor class to load it with, where the family's own processor needs a
# video processor and so torchvision (we never feed videos)
IMAGE_ONLY_PROCESSORS: dict[str, type] = {"qwen2_5_vl": ImageOnlyQwen25VLProcessor, "qwen3_vl": ImageOnlyQwen3VLProcessor,
                                          "llava_onevision": ImageOnlyLlavaOnevisionProcessor}


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000, special_tokens: Sequence[str] = SPECIAL_TOKENS,
                    eos: str = "<|im_end|>", pad: str = "<|endoftext|>", bos: str | None = None,
                    extra: dict[str, str] | None = None, chat_template: str = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `texts` with a family's special tokens (Qwen's by default), its
    eos/pad/bos and named extra tokens (`image_token`...), and a chat template; left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    named = {"bos_token": bos} if bos else {}
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos, pad_token=pad, **named,
                                      extra_special_tokens=extra if extra is not None else {"image_token": "<|image_pad|>"})
    wrapped.chat_template = chat_template
    wrapped.padding_side = "left"  # generation appends on the right
    return wrapped


def tiny_config(tokenizer: PreTrainedTokenizerFast, hidden: int = 64, layers: int = 2) -> Qwen2_5_VLConfig:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    heads = 4
    head_dim = hidden // heads
    third = head_dim // 2 // 3
    mrope = [head_dim // 2 - 2 * third, third, third]  # sums to head_dim / 2
    text = {"vocab_size": len(tokenizer), "hidden_size": hidden, "intermediate_size": hidden * 2,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]}
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": hidden, "window_size": 56,
              "fullatt_block_indexes": [1], "in_channels": 3}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"], bos_token_id=ids["<|endoftext|>"],
                              eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                              tie_word_embeddings=False)
    return config


def tiny_image_processor(side: int = 112) -> Qwen2VLImageProcessorPil:
    """Images resized to about side x side pixels: (side/14)^2 patches, a quarter as many tokens."""
    return Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                    min_pixels=side * side, max_pixels=side * side)


def build_tiny(out: Path, texts: Iterable[str], seed: int = 0, vocab_size: int = 1000, hidden: int = 64,
               layers: int = 2, image_side: int = 112) -> Path:
    """Create, save and return the folder of a tiny random-init Qwen2.5-VL checkpoint (written to a
    temporary sibling first, so a killed run never leaves half a model)."""
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(texts, vocab_size)
    model = Qwen2_5_VLForConditionalGeneration(tiny_config(tokenizer, hidden, layers))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.pad_token_id
    processor = ImageOnlyQwen25VLProcessor(tiny_image_processor(image_side), tokenizer, chat_template=CHAT_TEMPLATE)

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return replace_folder(Path(out), write)


class ModelSpecError(ValueError):
    """A `--model` value that names no usable model; the message says why."""


# the families a `hf:PATH` checkpoint is tested with (tests/test_model_families.py builds a tiny
# one of each with reference_models.families), by config.json model_type
def resolve_model(spec: str, folder: Path, texts: Callable[[], Iterable[str]], seed: int = 0) -> Path:
    """The checkpoint folder for `tiny` (built under `folder` on first use, its tokenizer trained on
    `texts()`) or `hf:<local path>` (a checkpoint already on disk, of a model type transformers'
    vision-language class loads; reference_models.families writes a tiny one of each tested family)."""
    if spec == "tiny":
        path = Path(folder) / "tiny-base"
        return path if (path / "config.json").exists() else build_tiny(path, texts(), seed=seed)
    if spec.startswith("hf:"):
        path = Path(spec[3:]).expanduser()
        if not (path / "config.json").exists():
            raise ModelSpecError(f"--model {spec}: {path} is not a checkpoint folder (no config.json); "
                                 "download the model first, e.g. `hf download Qwen/Qwen2.5-VL-3B-Instruct --local-dir PATH`")
        _check_family(spec, path)
        return path
    raise ModelSpecError(f"--model {spec!r}: expected {MODEL_HELP}")


def _check_family(spec: str, path: Path) -> None:
    """A config.json that transformers cannot read, or a model no vision-language class loads (a
    text-only LLM), is refused here in one line rather than by a traceback mid-run."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    try:
        model_type = AutoConfig.from_pretrained(path).model_type
    except (ValueError, OSError, KeyError) as exc:
        raise ModelSpecError(f"--model {spec}: {path / 'config.json'} is not a config transformers can read "
                             f"({str(exc).splitlines()[0]})") from None
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ModelSpecError(f"--model {spec}: model_type {model_type!r} is not a vision-language model "
                             f"(tested families: {', '.join(FAMILY_NAMES.values())})")


def load_processor(path: Path) -> Any:
    """The saved processor. Families whose processor carries a video processor (Qwen2.5-VL,
    Qwen3-VL, LLaVA-OneVision) load through their image-only class: the video processor needs
    torchvision, and AutoProcessor on such a folder without it fails or silently returns just the
    tokenizer. Others (Llama-3.2-Vision, Idefics3/SmolVLM) load through AutoProcessor."""
    if (Path(path) / "config.json").exists():
        model_type = AutoConfig.from_pretrained(path).model_type
        if model_type in IMAGE_ONLY_PROCESSORS:
            return IMAGE_ONLY_PROCESSORS[model_type].from_pretrained(path)
    return AutoProcessor.from_pretrained(path)


def load_model(path: Path, dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """(model, processor) of a saved checkpoint, tiny or real."""
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype or torch.float32)
    return model, load_processor(path)
