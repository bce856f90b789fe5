"""Tiny checkpoints of real vision-language model families, built offline, for `--model hf:PATH`.

Each family's folder looks like the real checkpoint's on disk: that family's config class at toy
size (random weights, `save_pretrained`), a byte-level BPE trained locally with the family's own
special tokens, the family's REAL chat template structure (no `{% generation %}` markers, as the
released checkpoints ship them, so training takes the rendered-prefix assistant mask), and the
family's processor with a torchvision-free image processor (`*ImageProcessorPil`). Processors that
insist on a video processor (Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision) are saved and loaded through
image-only subclasses (`models.load_processor` picks them by `model_type`, for real checkpoints
too). They exist so every family can be trained, evaluated and checked on a CPU in seconds:

    from radcorpora.reference_models.families import tiny_checkpoint
    folder = tiny_checkpoint("mllama", "/tmp/tiny-mllama", texts)   # then --model hf:/tmp/tiny-mllama
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from radcorpora.reference_models import models
from radcorpora.store.atomic import replace_folder, write_json

QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
               "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen/Qwen2.5-VL-*-Instruct chat_template.json (default system prompt, vision ids optional).
QWEN2_5_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen/Qwen3-VL-*-Instruct chat_template.jinja, tool-call branches left out (no system prompt by
# default; user and assistant turns rendered apart).
QWEN3_VL_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}<|im_start|>system\n"
    "{%- if messages[0].content is string %}{{- messages[0].content }}{%- else %}"
    "{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}"
    "{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content %}{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}{%- for content_item in message.content %}"
    "{%- if 'text' in content_item %}{{- content_item.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# The chat template transformers' convert_llava_onevision_weights_to_hf.py writes, without its
# generation markers: a turn's images first, then its videos, then its text. (The llava-hf hub
# checkpoints' chat_template.json differs in whitespace only: a space after the role, "\n" before
# each text and none after <image> or <|im_end|>; the assistant mask is taken from the rendered
# prefix either way.)
LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# meta-llama/Llama-3.2-11B-Vision-Instruct chat_template.json without the tool branches, and with
# the template's own fallback date (the real one reads today's date through strftime_now, which
# would make the rendered text, and so the batches, depend on the day).
MLLAMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{%- set image_ns = namespace(has_images=false) %}"
    "{%- for message in messages %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}{%- set image_ns.has_images = true %}{%- endif %}{%- endfor %}{%- endfor %}"
    "{%- if image_ns.has_images and not system_message == '' %}"
    "{{- raise_exception('Prompting with images is incompatible with system messages.') }}{%- endif %}"
    "{%- if not image_ns.has_images %}{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'image' %}{{- '<|image|>' }}{%- elif content['type'] == 'text' %}{{- content['text'] }}"
    "{%- endif %}{%- endfor %}{%- endif %}{{- '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# HuggingFaceTB/SmolVLM-*-Instruct (Idefics3) chat_template.json: "User:"/"Assistant:" turns,
# each closed by <end_of_utterance>; the generation prompt is "Assistant:", so the answer the
# model learns starts with the space after it.
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # config.json's model_type
    follows: str  # the released checkpoint whose chat template (structure) the tiny one ships
    turn_end: str  # the token closing an assistant turn (trained on, and where generation stops)
    image_token: str  # what one image part of a message becomes in the rendered text
    build: Callable[[Path, list[str], int, int], Path]
    requires: tuple[str, ...]  # transformers classes the family needs (older releases lack some)
    template: str

    def missing(self) -> list[str]:
        """The classes this transformers release lacks, if any."""
        import transformers

        return [name for name in self.requires if not hasattr(transformers, name)]


def _tokenizer(texts: list[str], vocab_size: int, special: Sequence[str], eos: str, pad: str, template: str,
               bos: str | None = None, extra: dict[str, str] | None = None) -> Any:
    return models.train_tokenizer(texts, vocab_size, special_tokens=special, eos=eos, pad=pad, bos=bos,
                                  extra=extra or {}, chat_template=template)


def _ids(tokenizer: Any, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def _text(tokenizer: Any, hidden: int = 64, layers: int = 2, **extra: Any) -> dict[str, Any]:
    """A toy decoder config: 4 heads of 16, 2 key-value heads."""
    return {"vocab_size": len(tokenizer), "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 4096, "tie_word_embeddings": False, **extra}


def _save(out: Path, model: Any, processor: Any, tokenizer: Any, seed: int) -> Path:
    """Generation stops at the turn end and pads with the tokenizer's pad token; written to a
    temporary sibling first, so a killed run never leaves half a checkpoint."""
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        # name the family's own processor class, as a released checkpoint does (the image-only
        # subclass is how models.load_processor reads it back here, by model_type)
        real = next(c for c in type(processor).__mro__ if not c.__name__.startswith("ImageOnly")).__name__
        config = folder / "processor_config.json"
        write_json(config, {**json.loads(config.read_text()), "processor_class": real})

    return replace_folder(Path(out), write)


def build_qwen2_5_vl(out: Path, texts: list[str], vocab_size: int = 600, seed: int = 0) -> Path:
    """The tiny Qwen2.5-VL of `models.build_tiny`, but with the released template (no generation tags)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    tokenizer = _tokenizer(texts, vocab_size, QWEN_TOKENS, "<|im_end|>", "<|endoftext|>", QWEN2_5_VL_TEMPLATE,
                           extra={"image_token": "<|image_pad|>"})
    model = Qwen2_5_VLForConditionalGeneration(models.tiny_config(tokenizer))
    processor = models.ImageOnlyQwen25VLProcessor(models.tiny_image_processor(56), tokenizer,
                                                  chat_template=QWEN2_5_VL_TEMPLATE)
    return _save(out, model, processor, tokenizer, seed)


def build_qwen3_vl(out: Path, texts: list[str], vocab_size: int = 600, seed: int = 0) -> Path:
    """Qwen3-VL: patch 16, interleaved M-RoPE, DeepStack features from vision block 0; 64 x 64 px images
    are 4 x 4 patches, 4 image tokens."""
    from transformers import (
        Qwen2VLImageProcessorPil,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
    )

    torch.manual_seed(seed)
    tokenizer = _tokenizer(texts, vocab_size, QWEN_TOKENS, "<|im_end|>", "<|endoftext|>", QWEN3_VL_TEMPLATE,
                           extra={"image_token": "<|image_pad|>"})
    pad, eos, image, video, start, end = _ids(tokenizer, "<|endoftext|>", "<|im_end|>", "<|image_pad|>",
                                              "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    text = _text(tokenizer, head_dim=16, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                          "mrope_section": [4, 2, 2], "mrope_interleaved": True},
                 bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 16,
              "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 64,
              "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}
    config = Qwen3VLConfig(text_config=text, vision_config=vision, image_token_id=image, video_token_id=video,
                           vision_start_token_id=start, vision_end_token_id=end, tie_word_embeddings=False)
    model = Qwen3VLForConditionalGeneration(config)
    side = 64
    image_processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                               image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                               min_pixels=side * side, max_pixels=side * side)
    processor = models.ImageOnlyQwen3VLProcessor(image_processor, tokenizer, chat_template=QWEN3_VL_TEMPLATE)
    return _save(out, model, processor, tokenizer, seed)


def build_llava_onevision(out: Path, texts: list[str], vocab_size: int = 600, seed: int = 0) -> Path:
    """LLaVA-OneVision (SigLIP + Qwen2, anyres): 28 px tiles of 2 x 2 patches; an image is its
    base view plus its best-fitting grid of tiles, with a newline feature per row."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
    )

    torch.manual_seed(seed)
    tokenizer = _tokenizer(texts, vocab_size, [*QWEN_TOKENS[:3], "<image>", "<video>"], "<|im_end|>", "<|endoftext|>",
                           LLAVA_ONEVISION_TEMPLATE, extra={"image_token": "<image>", "video_token": "<video>"})
    pad, eos, image, video = _ids(tokenizer, "<|endoftext|>", "<|im_end|>", "<image>", "<video>")
    side, pinpoints = 28, [[28, 28], [28, 56], [56, 28], [56, 56]]
    vision = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "image_size": side, "patch_size": 14}
    text = {"model_type": "qwen2", **_text(tokenizer, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad)}
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=image,
                                  video_token_index=video, image_grid_pinpoints=pinpoints,
                                  vision_feature_select_strategy="full", vision_feature_layer=-1,
                                  vision_aspect_ratio="anyres_max_9", tie_word_embeddings=False)
    model = LlavaOnevisionForConditionalGeneration(config)
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": side, "width": side}, image_grid_pinpoints=pinpoints,
                                                      do_pad=True)
    processor = models.ImageOnlyLlavaOnevisionProcessor(image_processor, tokenizer, num_image_tokens=(side // 14) ** 2,
                                                        vision_feature_select_strategy="full",
                                                        chat_template=LLAVA_ONEVISION_TEMPLATE,
                                                        vision_aspect_ratio="anyres_max_9")
    return _save(out, model, processor, tokenizer, seed)


def build_mllama(out: Path, texts: list[str], vocab_size: int = 600, seed: int = 0) -> Path:
    """Llama-3.2-Vision: images enter through cross-attention layers (here layer 1 of 3), never as
    tokens in the sequence; up to 2 tiles of 28 px per image."""
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaImageProcessorPil,
        MllamaProcessor,
    )

    torch.manual_seed(seed)
    special = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
               "<|end_header_id|>", "<|eot_id|>", "<|image|>"]
    tokenizer = _tokenizer(texts, vocab_size, special, "<|eot_id|>", "<|finetune_right_pad_id|>", MLLAMA_TEMPLATE,
                           bos="<|begin_of_text|>", extra={"image_token": "<|image|>"})
    bos, eos, pad, image = _ids(tokenizer, "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", "<|image|>")
    side, ratios = 28, [[1, 1], [1, 2], [2, 1]]
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_global_layers": 1,
              "attention_heads": 2, "image_size": side, "patch_size": 14, "max_num_tiles": 2,
              "intermediate_layers_indices": [0], "vision_output_dim": 64, "supported_aspect_ratios": ratios}
    text = {**_text(tokenizer, layers=3), "cross_attention_layers": [1], "bos_token_id": bos, "eos_token_id": eos,
            "pad_token_id": pad}
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=image)
    model = MllamaForConditionalGeneration(config)
    image_processor = MllamaImageProcessorPil(size={"height": side, "width": side}, max_image_tiles=2)
    processor = MllamaProcessor(image_processor, tokenizer, chat_template=MLLAMA_TEMPLATE)
    return _save(out, model, processor, tokenizer, seed)


def build_idefics3(out: Path, texts: list[str], vocab_size: int = 600, seed: int = 0) -> Path:
    """Idefics3 / SmolVLM: a SigLIP tower, pixel shuffle (scale 2) into a Llama decoder; images of
    56 px, one view each (image splitting off, which a 56 px image would not need anyway):
    <fake_token_around_image><global-img> + 4 <image> tokens + <fake_token_around_image>."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    torch.manual_seed(seed)
    special = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
               "<global-img>"]
    tokenizer = _tokenizer(texts, vocab_size, special, "<end_of_utterance>", "<|endoftext|>", IDEFICS3_TEMPLATE,
                           bos="<|im_start|>", extra={"image_token": "<image>"})
    bos, eos, pad, image = _ids(tokenizer, "<|im_start|>", "<end_of_utterance>", "<|endoftext|>", "<image>")
    side, patch, scale = 56, 14, 2
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": side, "patch_size": patch}
    text = {"model_type": "llama", **_text(tokenizer, head_dim=16, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)}
    config = Idefics3Config(vision_config=vision, text_config=text, image_token_id=image, scale_factor=scale,
                            pad_token_id=pad, tie_word_embeddings=False)
    model = Idefics3ForConditionalGeneration(config)
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": side},
                                                max_image_size={"longest_edge": side})
    processor = Idefics3Processor(image_processor, tokenizer, image_seq_len=(side // patch) ** 2 // scale ** 2,
                                  chat_template=IDEFICS3_TEMPLATE)
    return _save(out, model, processor, tokenizer, seed)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("qwen2_5_vl", "qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct", "<|im_end|>", "<|image_pad|>", build_qwen2_5_vl,
           ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLImageProcessorPil"), QWEN2_5_VL_TEMPLATE),
    Family("qwen3_vl", "qwen3_vl", "Qwen/Qwen3-VL-2B-Instruct", "<|im_end|>", "<|image_pad|>", build_qwen3_vl,
           ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor", "Qwen2VLImageProcessorPil"), QWEN3_VL_TEMPLATE),
    Family("llava_onevision", "llava_onevision", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "<|im_end|>", "<image>",
           build_llava_onevision, ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionImageProcessorPil"),
           LLAVA_ONEVISION_TEMPLATE),
    Family("mllama", "mllama", "meta-llama/Llama-3.2-11B-Vision-Instruct", "<|eot_id|>", "<|image|>", build_mllama,
           ("MllamaForConditionalGeneration", "MllamaProcessor", "MllamaImageProcessorPil"), MLLAMA_TEMPLATE),
    Family("idefics3", "idefics3", "HuggingFaceTB/SmolVLM-256M-Instruct", "<end_of_utterance>", "<image>",
           build_idefics3, ("Idefics3ForConditionalGeneration", "Idefics3Processor", "Idefics3ImageProcessorPil"),
           IDEFICS3_TEMPLATE),
)}


def tiny_checkpoint(family: str, out: Path | str, texts: Iterable[str], seed: int = 0, vocab_size: int = 600) -> Path:
    """Write a tiny random-init checkpoint of `family` (a key of FAMILIES) to `out`, its tokenizer
    trained on `texts`; returns the folder, ready for `--model hf:<folder>`."""
    if family not in FAMILIES:
        raise models.ModelSpecError(f"unknown model family {family!r} (known: {', '.join(FAMILIES)})")
    if missing := FAMILIES[family].missing():
        import transformers

        raise models.ModelSpecError(f"model family {family!r} needs {', '.join(missing)}, which transformers "
                                    f"{transformers.__version__} lacks")
    return FAMILIES[family].build(Path(out), list(texts), vocab_size, seed)
