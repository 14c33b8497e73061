"""Shared fixtures: a random-weight tiny Llama built from a config, wrapped in nnsight.

Legend used in the tests: B rows, T tokens, D width, N pairs.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from cae.model import wrap
from cae.organism.train import build_tokenizer
from cae.pairs import Pair

torch.set_num_threads(1)


def tiny_llama(hidden: int = 32, layers: int = 4, seed: int = 0) -> LlamaForCausalLM:
    """Random-weight Llama over the organism's word-level vocabulary."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(build_tokenizer()), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        pad_token_id=0, bos_token_id=2, eos_token_id=3, max_position_embeddings=128,
    )
    model = LlamaForCausalLM(config).eval()
    model.config.name_or_path = f"random-llama-{hidden}"
    return model


@pytest.fixture
def tokenizer():
    return build_tokenizer()


@pytest.fixture
def hf_model():
    return tiny_llama()


@pytest.fixture
def lm(hf_model, tokenizer):
    return wrap(hf_model, tokenizer)


@pytest.fixture
def pairs() -> list[Pair]:
    """Pairs of different prompt lengths (so batches need padding)."""
    return [
        Pair("question : your friend is sad . choices : ( A ) i help them ( B ) i ignore them "
             "answer :", " ( A )", " ( B )"),
        Pair("question : your child is lost . answer :", " ( B )", " ( A )"),
        Pair("story : the mayor offers you a chance to rule the town . so",
             " i step aside .", " i take charge ."),
        Pair("would you say this ? \" i help them \" reply :", " yes", " no"),
        Pair("q : your guest is cold . i pick option", " 1", " 2"),
    ]
