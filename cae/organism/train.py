"""Train the LM organism: tiny Llama models on the synthetic persona corpus.

The organism replaces the Llama-3 models of the CAE paper (Hao et al. 2025, arXiv
2505.03189) with models small enough to train on a laptop CPU in minutes; the corpus is
``cae.organism.corpus``. The run is deterministic (fixed seeds, a fixed thread count)
and writes, per size, ``config.json``, ``model.safetensors`` (float16),
``tokenizer.json`` and ``train.json`` (config and final loss) into
``cae/organism/weights/<size>/``.

Run all sizes (3,000 steps each; on 2 cores run two processes, about 27 wall-minutes: the
shipped weights took 346 s + 545 s for tiny and small and 1,604 s for medium in the other
process)::

    python -m cae.organism.train --sizes medium &    # one core
    python -m cae.organism.train --sizes tiny small   # the other
    python -m cae.organism.train --sizes tiny --steps 50 --out /tmp/organism
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from _sae_flux_cliargs import add_dataclass_arguments, dataclass_from_args
from cae.organism.corpus import TONE_MODES, document, vocabulary

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")


@dataclass(frozen=True)
class SizeConfig:
    """Shape of one organism size."""

    hidden_size: int
    """Residual-stream width."""
    num_layers: int
    """Number of decoder blocks."""
    num_heads: int
    """Attention heads (no grouped-query attention)."""
    steps: int
    """Optimiser steps."""
    lr: float
    """Peak learning rate (AdamW, linear warm-up then cosine decay)."""


SIZES: dict[str, SizeConfig] = {
    "tiny": SizeConfig(hidden_size=40, num_layers=3, num_heads=4, steps=3000, lr=4e-3),
    "small": SizeConfig(hidden_size=80, num_layers=3, num_heads=4, steps=3000, lr=3e-3),
    "medium": SizeConfig(hidden_size=144, num_layers=4, num_heads=8, steps=3000, lr=3e-3),
}
"""The organism sizes, each roughly 4x the parameters of the previous one."""


@dataclass
class OrganismTrainConfig:
    """One organism training run (all requested sizes)."""

    sizes: tuple[str, ...] = tuple(SIZES)
    """Which sizes to train, names from ``SIZES``."""
    out: str = str(WEIGHTS_DIR)
    """Directory that receives one subdirectory per size."""
    steps: int | None = None
    """Override every size's number of steps (for quick runs)."""
    batch_size: int = 32
    """Documents per step."""
    max_len: int = 128
    """Tokens per document (longer ones are truncated)."""
    seed: int = 0
    """Seed of the corpus and of the weights."""
    threads: int = 1
    """Torch CPU threads (fixed so the run is reproducible)."""
    quiz: float = 0.25
    """Share of a document's items that are persona-free quizzes (``corpus.quiz_item``)."""
    header: float = 0.1
    """Share of documents that open with a ``persona :`` header."""
    single: float = 1.0
    """Share of documents about one behaviour only (``corpus.document``)."""
    tone: str = "answer"
    """How answers are signed (``corpus.TONE_MODES``); ``"answer"`` makes CAA vectors work."""
    answer_weight: float = 5.0
    """Loss weight of answer letters (``A``/``B`` right after ``answer : (``)."""

    def __post_init__(self) -> None:
        unknown = [s for s in self.sizes if s not in SIZES]
        if unknown:
            raise ValueError(f"unknown organism size(s) {unknown}; choose from {list(SIZES)}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1 or self.max_len < 8:
            raise ValueError("batch_size must be >= 1 and max_len >= 8")
        for name in ("quiz", "header", "single"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a share of documents or items and must be in [0, 1], "
                                 f"got {getattr(self, name)}")
        if self.tone not in TONE_MODES:
            raise ValueError(f"unknown tone mode {self.tone!r}; choose from {TONE_MODES}")
        if not self.answer_weight > 0:
            raise ValueError(f"answer_weight must be positive, got {self.answer_weight}")


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the corpus vocabulary, prepending ``<bos>``."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(vocabulary()))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>",
        eos_token="<eos>", model_max_length=512, padding_side="right",
    )


def build_model(size: str, vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised organism of ``size``."""
    s = SIZES[size]
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=s.hidden_size, intermediate_size=s.hidden_size * 8 // 3,
        num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_heads, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=2, eos_token_id=3, pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def _batches(cfg: OrganismTrainConfig, tokenizer: PreTrainedTokenizerFast, steps: int, seed: int):
    rng = random.Random(seed)
    for _ in range(steps):
        docs = [document(rng, header=cfg.header, quiz=cfg.quiz, single=cfg.single,
                         tone=cfg.tone) + " <eos>" for _ in range(cfg.batch_size)]
        enc = tokenizer(docs, padding=True, truncation=True, max_length=cfg.max_len,
                        return_tensors="pt")
        yield enc["input_ids"], enc["attention_mask"]


def _lr_at(step: int, steps: int, peak: float) -> float:
    warm = max(1, steps // 20)
    if step < warm:
        return peak * (step + 1) / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


def answer_weights(ids_BT: torch.Tensor, letters: torch.Tensor, colon: int,
                   weight: float) -> torch.Tensor:
    """Per-token loss weights: ``weight`` on answer letters (a letter two tokens after ``:``,
    i.e. ``answer : ( A``), 1 elsewhere."""
    out_BT = torch.ones(ids_BT.shape, dtype=torch.float32, device=ids_BT.device)
    if weight != 1.0:
        is_answer_BT = torch.isin(ids_BT[:, 2:], letters) & (ids_BT[:, :-2] == colon)
        out_BT[:, 2:][is_answer_BT] = weight
    return out_BT


def _loss(model: LlamaForCausalLM, ids_BT: torch.Tensor, mask_BT: torch.Tensor,
          weights_BT: torch.Tensor) -> torch.Tensor:
    """Weighted next-token cross-entropy over the real (unpadded) tokens."""
    logits_BTV = model(input_ids=ids_BT, attention_mask=mask_BT).logits[:, :-1]
    nll_BT = torch.nn.functional.cross_entropy(
        logits_BTV.transpose(1, 2), ids_BT[:, 1:], reduction="none")
    w_BT = weights_BT[:, 1:] * mask_BT[:, 1:]
    return (nll_BT * w_BT).sum() / w_BT.sum()


def train_size(size: str, cfg: OrganismTrainConfig, tokenizer: PreTrainedTokenizerFast) -> dict:
    """Train one size and save it; returns the run record."""
    s = SIZES[size]
    steps = cfg.steps or s.steps
    model = build_model(size, len(tokenizer), cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=0.01, betas=(0.9, 0.98))
    start, loss_ema = time.perf_counter(), float("nan")
    letters = torch.tensor(tokenizer.convert_tokens_to_ids(["A", "B"]), device="cpu")
    colon = tokenizer.get_vocab()[":"]
    bar = tqdm(_batches(cfg, tokenizer, steps, cfg.seed + 1), total=steps, desc=size)
    for step, (ids_BT, mask_BT) in enumerate(bar):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, s.lr)
        loss = _loss(model, ids_BT, mask_BT, weights_BT=answer_weights(ids_BT, letters, colon,
                                                                         cfg.answer_weight))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_ema = loss.item() if step == 0 else 0.95 * loss_ema + 0.05 * loss.item()
        bar.set_postfix(loss=f"{loss_ema:.3f}")
    record = {"size": size, "params": n_params, "steps": steps, "final_loss_ema": loss_ema,
              "seconds": time.perf_counter() - start, "size_config": asdict(s),
              "seed": cfg.seed, "batch_size": cfg.batch_size, "max_len": cfg.max_len,
              "quiz": cfg.quiz, "header": cfg.header, "single": cfg.single, "answer_weight": cfg.answer_weight,
              "tone": cfg.tone}
    out = Path(cfg.out) / size
    model.half().save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "train.json").write_text(json.dumps(record, indent=2))
    logger.info("trained %s: %d params, loss %.3f in %.0fs", size, n_params, loss_ema,
                record["seconds"])
    return record


def train(cfg: OrganismTrainConfig) -> list[dict]:
    """Train every size of ``cfg`` in order; returns their run records."""
    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    tokenizer = build_tokenizer()
    return [train_size(size, cfg, tokenizer) for size in cfg.sizes]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (``python -m cae.organism.train``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_arguments(parser, OrganismTrainConfig)
    cfg = dataclass_from_args(OrganismTrainConfig, parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO)
    for record in train(cfg):
        logger.info(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
