"""A local Hugging Face vision-language model as a :class:`sae_flux.interp.chat.ChatBackend`.

The explainer of Shabalin et al. 2025 (arXiv 2505.24360) used a hosted VLM; this backend runs
any ``AutoModelForImageTextToText`` checkpoint (Qwen2.5-VL, SmolVLM, LLaVA, ...) through
transformers: the chat template of the model's processor formats the system prompt, the
images and the text; generation is greedy; the first JSON object of the answer is parsed
(:func:`sae_flux.interp.chat.parse_json`), with retries on invalid JSON and the same on-disk
cache as the HTTP backend.

Example:
    >>> chat = HFChat.from_pretrained(  # doctest: +SKIP
    ...     "/models/Qwen2.5-VL-3B-Instruct", cache_dir="vlm-cache")
    >>> VLMInterpreter(chat, name="qwen2.5-vl-3b")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sae_flux.interp.chat import BackendError, ResponseCache, parse_json

logger = logging.getLogger(__name__)


def _image_hash(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return hashlib.sha256(buffer.getvalue()).hexdigest()


class HFChat:
    """Greedy generation with a transformers image-text-to-text model and its processor."""

    def __init__(self, model: Any, processor: Any, name: str = "hf", max_new_tokens: int = 400,
                 retries: int = 1, cache_dir: str | Path | None = None) -> None:
        self.model = model
        self.processor = processor
        self.name = name
        self.max_new_tokens = max_new_tokens
        self.retries = retries
        self.cache = ResponseCache(cache_dir)

    @classmethod
    def from_pretrained(cls, path: str | Path, cache_dir: str | Path | None = None, **kwargs: Any) -> HFChat:
        """Load a local checkpoint directory (or a cached repo id with ``HF_HUB_OFFLINE=1``)."""
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(str(path))
        model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
        model.eval()
        return cls(model, processor, name=Path(str(path)).name, cache_dir=cache_dir)

    def messages(self, system: str, text: str, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "image", "image": im.convert("RGB")} for im in images]
        content.append({"type": "text", "text": text})
        return [{"role": "system", "content": [{"type": "text", "text": system}]},
                {"role": "user", "content": content}]

    def generate(self, system: str, text: str, images: Sequence[Image.Image]) -> str:
        """The model's raw answer text."""
        inputs = self.processor.apply_chat_template(
            self.messages(system, text, images), add_generation_prompt=True, tokenize=True,
            return_dict=True, return_tensors="pt",
        )
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new_tokens = out[0, inputs["input_ids"].shape[1]:]
        return str(self.processor.decode(new_tokens, skip_special_tokens=True))

    def ask(self, system: str, text: str, images: Sequence[Image.Image], keys: Sequence[str]) -> dict[str, Any]:
        key = ResponseCache.key({"model": self.name, "system": system, "text": text,
                                 "images": [_image_hash(im) for im in images]})
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        problem = ""
        for attempt in range(self.retries + 1):
            answer = self.generate(system, text, images)
            try:
                parsed = parse_json(answer, keys)
            except ValueError as err:
                problem = str(err)
                logger.warning("attempt %d/%d: %s", attempt + 1, self.retries + 1, problem)
                continue
            self.cache.put(key, parsed)
            return parsed
        raise BackendError(f"model {self.name} gave no valid JSON in {self.retries + 1} attempts: {problem}")
