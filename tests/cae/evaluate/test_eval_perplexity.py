"""Perplexity cost equals a naive loop over windows with a plain forward hook (windows read
after the tokenizer's BOS token when it has one; each position rule as in generation), and
a corpus shorter than the context is a clear error."""

from __future__ import annotations

import math

import pytest
import torch

from cae import SteeringVector
from cae.evaluate.perplexity import PerplexityConfig, perplexity_cost, windows
from cae.organism.corpus import neutral_text

TEXT = neutral_text(12, seed=1)


def naive_ppl(hf, tokenizer, text, context, add_D=None, layer=1, skip=0, bos=True):
    """Reference: one window at a time, in ONE forward without a cache, with a hook adding
    ``add_D`` at every position from ``skip`` on (what a rule steers when the window is read
    as a prompt plus decoding steps)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    head = [tokenizer.bos_token_id] if bos else []

    def hook(_m, _i, out):
        out = out.clone()
        out[:, skip:] += add_D
        return out

    handle = None if add_D is None else hf.model.layers[layer].register_forward_hook(hook)
    try:
        nll, count = 0.0, 0
        for w in range(len(ids) // context):
            window = torch.tensor([head + ids[w * context:(w + 1) * context]])
            with torch.no_grad():
                logp = torch.log_softmax(hf(input_ids=window).logits[0, :-1], -1)
            n = window.shape[1] - 1
            nll -= float(logp[torch.arange(n), window[0, 1:]].sum())
            count += n
    finally:
        if handle is not None:
            handle.remove()
    return math.exp(nll / count)


def test_windows_cut_the_corpus_without_special_tokens(tokenizer):
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    w = windows(tokenizer, TEXT, PerplexityConfig([1.0], context=10))
    assert w.shape == (len(ids) // 10, 10) and w.flatten().tolist() == ids[: w.numel()]


# window = <bos> + 10 tokens, prompt = <bos> + 3 tokens: where each rule starts steering
FIRST_STEERED = {"all": 0, "from_prompt_end": 3, "generated": 4}


@pytest.mark.parametrize("rule", sorted(FIRST_STEERED))
def test_perplexity_matches_a_naive_loop_with_a_plain_hook(lm, hf_model, tokenizer, rule):
    sv = SteeringVector.random(hf_model, [1], seed=4, norm=3.0)
    res = perplexity_cost(lm, TEXT, sv, PerplexityConfig([-2.0, 2.0], context=10, batch_size=3,
                                                         positions=rule, prompt_tokens=3))
    assert res.multipliers == [-2.0, 0.0, 2.0] and res.bos and res.positions == rule
    for m, ppl in zip(res.multipliers, res.perplexity, strict=True):
        ref = naive_ppl(hf_model, tokenizer, TEXT, 10, None if m == 0 else m * sv.vectors[1],
                        skip=FIRST_STEERED[rule])
        assert ppl == pytest.approx(ref, rel=1e-4)
    assert res.baseline == res.perplexity[1]
    assert res.increase == pytest.approx([p / res.baseline - 1 for p in res.perplexity])
    assert res.n_tokens == res.n_windows * 10  # after <bos>, every window token is scored


def test_a_tokenizer_without_bos_reads_windows_without_one(lm, hf_model, tokenizer):
    from tokenizers import processors

    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    assert tokenizer("the river")["input_ids"][0] != tokenizer.bos_token_id
    sv = SteeringVector.random(hf_model, [1], seed=4, norm=3.0)
    res = perplexity_cost(lm, TEXT, sv, PerplexityConfig([2.0], context=10))
    assert not res.bos and res.n_tokens == res.n_windows * 9
    ref = naive_ppl(hf_model, tokenizer, TEXT, 10, 2.0 * sv.vectors[1], bos=False)
    assert res.perplexity[1] == pytest.approx(ref, rel=1e-4)


def test_corpus_shorter_than_the_context_is_a_clear_error(lm, hf_model):
    sv = SteeringVector.random(hf_model, [1], seed=4)
    with pytest.raises(ValueError, match="corpus is too short: 7 tokens, fewer than the requested "
                                         "context of 64"):
        perplexity_cost(lm, "the river runs past the bridge .", sv, PerplexityConfig([1.0]))


def test_context_longer_than_the_model_allows_is_a_clear_error(lm, hf_model):
    sv = SteeringVector.random(hf_model, [1], seed=4)
    with pytest.raises(ValueError, match=r"context of 200 tokens \(\+1 BOS\) exceeds the "
                                         "model's max_position_embeddings of 128"):
        perplexity_cost(lm, neutral_text(100), sv, PerplexityConfig([1.0], context=200))


@pytest.mark.parametrize("kwargs, message", [
    ({"context": 1}, "context must be >= 2"),
    ({"positions": "middle"}, "unknown positions 'middle'"),
    ({"prompt_tokens": 64}, r"prompt_tokens must be in \[1, context\)"),
    ({"max_windows": 0}, "max_windows must be >= 1"),
])
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PerplexityConfig([1.0], **kwargs)
