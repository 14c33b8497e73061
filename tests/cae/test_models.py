"""The same weights through an HF model, nnsight's TransformersModel (and its deprecated
LanguageModel alias) and a TransformerLens HookedTransformer: the same vector, the same
steering, within fp32 tolerance."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers
from nnsight import LanguageModel, TransformersModel

from cae import SteeringVector
from cae.model import wrap
from cae.organism.train import build_tokenizer

transformer_lens = pytest.importorskip("transformer_lens")

PAIRS = [("question : your friend is sad . answer :", " ( A )", " ( B )"),
         ("story : the mayor offers you a chance to rule the town . so", " i step aside .",
          " i take charge ."),
         ("q : your guest is cold . i pick option", " 1", " 2")]
PROMPT = "story : your friend is sad . so"


@pytest.fixture(scope="module")
def same_weights():
    """A tiny random GPT-2 and the HookedTransformer holding exactly its weights."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import convert_gpt2_weights

    tok = build_tokenizer()
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=32, n_layer=3, n_head=4, n_positions=64, vocab_size=len(tok), pad_token_id=0,
        bos_token_id=2, eos_token_id=3, initializer_range=0.2)).eval()
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=32, n_ctx=64, d_head=8, n_heads=4, d_mlp=128, d_vocab=len(tok),
        act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard",
        default_prepend_bos=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TL 3 prefers TransformerBridge
        ht = HookedTransformer(cfg)
    ht.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False,
                                   center_writing_weights=False, center_unembed=False,
                                   fold_value_biases=False, refactor_factored_attn_matrices=False)
    ht.tokenizer = tok
    return hf, tok, ht.eval()


def test_wrap_gives_a_transformers_model_without_the_deprecation_warning(same_weights):
    hf, tok, _ = same_weights
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm = wrap(hf, tok)
    assert type(lm) is TransformersModel


@pytest.mark.parametrize("site", ["block", "mlp"])
def test_the_same_vector_from_hf_transformers_model_language_model_and_tl(same_weights, site):
    hf, tok, ht = same_weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NNsightDeprecationWarning: the alias is deprecated
        old = LanguageModel(hf, tokenizer=tok)
    vectors = [SteeringVector.train(m, PAIRS, [0, 2], read="mean", site=site, batch_size=2)
               for m in (wrap(hf, tok), old, ht)]
    for other in vectors[1:]:
        for layer in (0, 2):
            torch.testing.assert_close(other.vectors[layer], vectors[0].vectors[layer],
                                       atol=1e-5, rtol=1e-4)
    assert vectors[0].vectors[2].norm() > 0.5


@pytest.mark.parametrize("positions", ["all", "from_prompt_end"])
def test_steering_a_hooked_transformer_equals_steering_the_hf_model(same_weights, positions):
    hf, tok, ht = same_weights
    sv = SteeringVector.random(hf, [1], seed=3, norm=4.0)
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    with torch.no_grad():
        with sv.apply(hf, 2.0, positions=positions):
            hf_logits = hf(ids).logits
        with sv.apply(ht, 2.0, positions=positions, force=True):
            tl_logits = ht(ids)
        plain = ht(ids)
    torch.testing.assert_close(tl_logits, hf_logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(tl_logits, plain, atol=1e-3)


def test_cached_generation_agrees_for_every_position_rule(same_weights):
    hf, tok, ht = same_weights
    sv = SteeringVector.random(hf, [1], seed=4, norm=6.0)
    ids = torch.tensor([tok(PROMPT)["input_ids"]])
    outs = {}
    for positions in ("all", "from_prompt_end", "generated"):
        with torch.no_grad(), sv.apply(hf, 3.0, positions=positions):
            hf_ids = hf.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        with torch.no_grad(), sv.apply(ht, 3.0, positions=positions, force=True):
            tl_ids = ht.generate(ids, max_new_tokens=6, do_sample=False, use_past_kv_cache=True,
                                 verbose=False, stop_at_eos=False)
        assert torch.equal(tl_ids, hf_ids), positions
        outs[positions] = hf_ids
    assert len({tuple(v[0].tolist()) for v in outs.values()}) > 1  # the rules differ here
