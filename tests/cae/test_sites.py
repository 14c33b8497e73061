"""Sites (block output, attention output, MLP output) on every architecture the layer finder
supports, on tiny random configs: training reads the site's output, applying steers it
exactly as a plain forward hook on that module, and the vector saves and loads."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import transformers

from cae import SteeringVector
from cae.model import site_module, site_path, wrap
from cae.names import SITES
from cae.organism.train import build_tokenizer

SMALL = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
         "intermediate_size": 64, "max_position_embeddings": 128}
GQA = {**SMALL, "num_key_value_heads": 2}
ARCHITECTURES = {
    "GPT2Config": {"n_embd": 32, "n_layer": 3, "n_head": 4, "n_positions": 128},
    "LlamaConfig": GQA,
    "Qwen2Config": GQA,
    "Qwen3Config": {**GQA, "head_dim": 8},
    "Gemma2Config": {**GQA, "head_dim": 8},
    "Gemma3TextConfig": {**GQA, "head_dim": 8},
    "MistralConfig": GQA,
    "GPTNeoXConfig": SMALL,
    "Phi3Config": GQA,
    "MixtralConfig": {**GQA, "num_local_experts": 4, "num_experts_per_tok": 2},
}
PRESENT = [name for name in ARCHITECTURES if hasattr(transformers, name)]
PAIRS = [("question : your friend is sad . answer :", " ( A )", " ( B )"),
         ("story : the mayor offers you a chance to rule the town . so", " i step aside .",
          " i take charge ."),
         ("q : your guest is cold . i pick option", " 1", " 2")]


def tiny(config_name: str) -> tuple[torch.nn.Module, object]:
    tokenizer = build_tokenizer()
    config = getattr(transformers, config_name)(
        vocab_size=len(tokenizer), pad_token_id=0, bos_token_id=2, eos_token_id=3,
        **ARCHITECTURES[config_name])
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    hf.config.name_or_path = f"random-{config_name}"
    return hf, tokenizer


def site_outputs(hf, tokenizer, text: str, layer: int, site: str) -> torch.Tensor:
    """The site's output over ``text`` (a plain forward hook): [T, D]."""
    seen = []
    handle = site_module(hf, layer, site).register_forward_hook(
        lambda _m, _i, out: seen.append((out[0] if isinstance(out, tuple) else out)[0].clone()))
    try:
        with torch.no_grad():
            hf(**tokenizer(text, return_tensors="pt"))
    finally:
        handle.remove()
    return seen[0]


def test_every_supported_architecture_is_installed():
    assert PRESENT == list(ARCHITECTURES)  # transformers 5.6+ has all ten config classes


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("config_name", PRESENT)
def test_train_apply_save_load_at_each_site(config_name, site, tmp_path):
    hf, tokenizer = tiny(config_name)
    lm = wrap(hf, tokenizer)
    sv = SteeringVector.train(lm, PAIRS, layers=[1], read="last", site=site, batch_size=2)
    assert sv.meta.site == site
    # training: the mean over pairs of the site's last-token output, positive minus negative
    diffs = [site_outputs(hf, tokenizer, p + pos, 1, site)[-1]
             - site_outputs(hf, tokenizer, p + neg, 1, site)[-1] for p, pos, neg in PAIRS]
    torch.testing.assert_close(sv.vectors[1], torch.stack(diffs).mean(0), atol=1e-5, rtol=1e-4)
    # applying: exactly a plain hook adding the vector to that module's output
    enc = tokenizer(PAIRS[1][0], return_tensors="pt")
    target = site_module(hf, 1, site)

    def plain(_m, _i, out):
        add = 2.0 * sv.vectors[1]
        return (out[0] + add, *out[1:]) if isinstance(out, tuple) else out + add

    with torch.no_grad():
        with sv.apply(hf, 2.0, positions="all"):
            steered = hf(**enc).logits
        handle = target.register_forward_hook(plain)
        reference = hf(**enc).logits
        handle.remove()
        unsteered = hf(**enc).logits
    torch.testing.assert_close(steered, reference, atol=0, rtol=0)
    assert not torch.allclose(steered, unsteered)
    back = SteeringVector.load(sv.save(tmp_path / "v"))
    assert back.meta == sv.meta and torch.equal(back.vectors[1], sv.vectors[1])


def test_site_paths_name_each_architectures_modules():
    paths = {name: [site_path(tiny(name)[0], 2, s) for s in SITES] for name in
             ("GPT2Config", "GPTNeoXConfig", "MixtralConfig")}
    assert paths == {
        "GPT2Config": ["transformer.h.2", "transformer.h.2.attn", "transformer.h.2.mlp"],
        "GPTNeoXConfig": ["gpt_neox.layers.2", "gpt_neox.layers.2.attention",
                          "gpt_neox.layers.2.mlp"],
        "MixtralConfig": ["model.layers.2", "model.layers.2.self_attn", "model.layers.2.mlp"],
    }


def test_a_site_the_architecture_lacks_is_one_line_naming_the_model_class():
    hf, tokenizer = tiny("LlamaConfig")
    attn_sv = SteeringVector.train(
        wrap(hf, tokenizer), PAIRS[:1], [1], read="last", site="attn")
    del hf.model.layers[1].self_attn  # a block without attention (as in a state-space hybrid)
    message = (r"^LlamaForCausalLM has no 'attn' site: decoder block 1 \(LlamaDecoderLayer\) has "
               r"none of \['self_attn', 'attn', 'attention'\] among its children \['mlp', ")
    with pytest.raises(ValueError, match=message) as err:
        SteeringVector.train(wrap(hf, tokenizer), PAIRS, [1], site="attn")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=message), attn_sv.apply(hf, 1.0):
        pass
    with pytest.raises(ValueError, match=r"unknown site 'ffn'; choose from \['block', 'attn', "):
        SteeringVector.train(wrap(hf, tokenizer), PAIRS, [1], site="ffn")


def test_vectors_of_different_sites_do_not_combine():
    hf, _ = tiny("LlamaConfig")
    block = SteeringVector.random(hf, [1])
    attn = SteeringVector(block.vectors, replace(block.meta, site="attn"))
    with pytest.raises(ValueError, match="cannot combine vectors of different sites: 'block' and "
                                         "'attn'"):
        _ = block + attn
    with pytest.raises(ValueError, match=r"unknown site 'ffn'; choose from \['block', 'attn', "
                                         r"'mlp'\]"):
        replace(block.meta, site="ffn")
