"""Perplexity cost equals a naive loop over windows with a plain forward hook, and a corpus
shorter than the context is a clear error."""

from __future__ import annotations

import math

import pytest
import torch

from cae import SteeringVector
from cae.evaluate.perplexity import PerplexityConfig, perplexity_cost, windows
from cae.organism.corpus import neutral_text

TEXT = neutral_text(12, seed=1)


def naive_ppl(hf, tokenizer, text, context, add_D=None, layer=1):
    """Reference: one window at a time, hook adding ``add_D`` at every position."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    handle = None
    if add_D is not None:
        handle = hf.model.layers[layer].register_forward_hook(lambda _m, _i, o: o + add_D)
    try:
        nll, count = 0.0, 0
        for w in range(len(ids) // context):
            window = torch.tensor([ids[w * context:(w + 1) * context]])
            with torch.no_grad():
                logp = torch.log_softmax(hf(input_ids=window).logits[0, :-1], -1)
            nll -= float(logp[torch.arange(context - 1), window[0, 1:]].sum())
            count += context - 1
    finally:
        if handle is not None:
            handle.remove()
    return math.exp(nll / count)


def test_windows_cut_the_corpus_without_special_tokens(tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    w = windows(tokenizer, TEXT, PerplexityConfig([1.0], context=10))
    assert w.shape == (len(ids) // 10, 10) and w.flatten().tolist() == ids[: w.numel()]


def test_perplexity_matches_a_naive_loop_with_a_plain_hook(lm, hf_model, tokenizer):
    sv = SteeringVector.random(hf_model, [1], seed=4, norm=3.0)
    res = perplexity_cost(lm, TEXT, sv, PerplexityConfig([-2.0, 2.0], context=10, batch_size=3))
    assert res.multipliers == [-2.0, 0.0, 2.0]
    for m, ppl in zip(res.multipliers, res.perplexity, strict=True):
        ref = naive_ppl(hf_model, tokenizer, TEXT, 10, None if m == 0 else m * sv.vectors[1])
        assert ppl == pytest.approx(ref, rel=1e-4)
    assert res.baseline == res.perplexity[1]
    assert res.increase == pytest.approx([p / res.baseline - 1 for p in res.perplexity])
    assert res.n_tokens == res.n_windows * 9


def test_corpus_shorter_than_the_context_is_a_clear_error(lm, hf_model):
    sv = SteeringVector.random(hf_model, [1], seed=4)
    with pytest.raises(ValueError, match="corpus is too short: 7 tokens, fewer than the requested "
                                         "context of 64"):
        perplexity_cost(lm, "the river runs past the bridge .", sv, PerplexityConfig([1.0]))


def test_context_longer_than_the_model_allows_is_a_clear_error(lm, hf_model):
    sv = SteeringVector.random(hf_model, [1], seed=4)
    with pytest.raises(ValueError, match="context of 200 tokens exceeds the model's "
                                         "max_position_embeddings of 128"):
        perplexity_cost(lm, neutral_text(100), sv, PerplexityConfig([1.0], context=200))


@pytest.mark.parametrize("kwargs, message", [
    ({"context": 1}, "context must be >= 2"),
    ({"positions": "from_prompt_end"}, "steers only a window's last token"),
    ({"max_windows": 0}, "max_windows must be >= 1"),
])
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PerplexityConfig([1.0], **kwargs)
