"""Building from a Hugging Face LM through nnsight and from a Flux activation cache; the CLI."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import itda
from _sae_flux_shared.commit import InjectedCrash, crash_after, operations
from itda.cli import main as itda_main
from itda.sources import lm_batches
from sae_flux.itda_build import build_from_cache

WORDS = "the a red blue green circle square on left right of is and above below".split()
TEXTS = [
    "the red circle on the left",
    "a blue square",
    "the square is right of the circle",
    "green circle above a red square",
    "the blue circle is below the green square",
    "a circle and a square",
]


@pytest.fixture(scope="module")
def tiny_lm():
    import nnsight
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
    )
    hf = LlamaForCausalLM(cfg).eval()
    return nnsight.LanguageModel(hf, tokenizer=tok), hf, tok


def _hooked_residual(hf, tok, text: str, layer: int) -> torch.Tensor:
    """Reference: a plain torch forward hook on the decoder layer, one unpadded text."""
    seen = []
    handle = hf.model.layers[layer].register_forward_hook(
        lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            hf(**tok([text], return_tensors="pt"))
    finally:
        handle.remove()
    return seen[0][0]


def test_lm_batches_equal_a_plain_forward_hook_with_padding_dropped(tiny_lm):
    lm, hf, tok = tiny_lm
    batches = list(lm_batches(lm, TEXTS, layer=1, batch_size=4))
    acts = torch.cat([b.acts_ND for b in batches])
    prompt = torch.cat([b.prov["prompt"] for b in batches])
    token = torch.cat([b.prov["token"] for b in batches])
    for i, text in enumerate(TEXTS):
        ref = _hooked_residual(hf, tok, text, 1)
        assert torch.equal(token[prompt == i], torch.arange(len(ref)))
        torch.testing.assert_close(acts[prompt == i], ref, atol=1e-5, rtol=1e-5)
    assert batches[0].hook == "layers.1.output"


def test_build_from_lm_records_prompt_token_and_hook(tiny_lm):
    lm, hf, tok = tiny_lm
    d = itda.build_from_lm(
        lm,
        TEXTS,
        layer=0,
        config=itda.BuildConfig(
            target_l0=2, loss_threshold=0.2, max_atoms=200, normalization="none"
        ),
        progress=False,
    )
    assert d.cfg.metadata.hook_name == "layers.0.output" and d.cfg.d_in == 32
    for atom in range(0, d.cfg.d_sae, 5):
        who = d.describe(atom)
        ref = _hooked_residual(hf, tok, TEXTS[who.prompt], 0)[who.token]
        torch.testing.assert_close(
            d.atoms[atom], torch.nn.functional.normalize(ref, dim=0), atol=1e-5, rtol=1e-5
        )


def test_build_from_lm_refuses_a_layer_the_model_does_not_have(tiny_lm):
    lm, _, _ = tiny_lm
    with pytest.raises(ValueError, match="layer 5 out of range: the model has 2 decoder layers"):
        itda.build_from_lm(lm, TEXTS, layer=5, progress=False)


def test_build_from_lm_refuses_no_texts(tiny_lm):
    with pytest.raises(ValueError, match="empty activation stream"):
        itda.build_from_lm(tiny_lm[0], [], layer=0, progress=False)


def test_cli_build_lm_writes_a_loadable_dictionary(tiny_lm, tmp_path):
    _, hf, tok = tiny_lm
    hf.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    (tmp_path / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    code = itda_main(
        [
            "build-lm",
            "--model",
            str(tmp_path / "model"),
            "--texts",
            str(tmp_path / "texts.txt"),
            "--layer",
            "1",
            "--target-l0",
            "2",
            "--loss-threshold",
            "0.3",
            "--out",
            str(tmp_path / "d"),
            "--no-progress",
        ]
    )
    assert code == 0
    d = itda.ITDA.load(tmp_path / "d")
    assert d.cfg.target_l0 == 2 and d.describe(0).hook == "layers.1.output"


def test_cli_reports_bad_threshold_and_exits_nonzero(tmp_path, caplog, capsys):
    with caplog.at_level(logging.ERROR):
        code = itda_main(
            [
                "build",
                "--cache",
                str(tmp_path),
                "--loss-threshold",
                "1.5",
                "--out",
                str(tmp_path / "d"),
            ]
        )
    assert code == 2
    assert "loss_threshold must be in (0, 1], got 1.5" in capsys.readouterr().err


@pytest.fixture(scope="module")
def flux_cache(tmp_path_factory):
    from sae_flux.cache import CacheConfig, write_cache

    root = tmp_path_factory.mktemp("flux")
    prompts = root / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green circle\na red square\n")
    cfg = CacheConfig(
        model="tiny",
        prompts=str(prompts),
        hooks=["double.0.img"],
        out=str(root / "cache"),
        num_inference_steps=2,
        batch_size=2,
        shard_prompts=2,
    )
    write_cache(cfg)
    return root / "cache"


def test_build_from_cache_keeps_step_and_position_provenance(flux_cache):
    from sae_flux.cache import CacheReader

    reader = CacheReader(flux_cache)
    acts, prov = zip(*reader.iter_shards(), strict=True)
    acts_ND = torch.cat(acts).float()
    cols = {k: torch.cat([p[k] for p in prov]) for k in prov[0]}
    d = build_from_cache(
        flux_cache,
        itda.BuildConfig(target_l0=4, loss_threshold=0.3, max_atoms=500),
        batch_size=64,
        progress=False,
    )
    assert d.cfg.metadata.hook_name == "double.0.img"
    assert d.cfg.metadata.model_name == reader.manifest.model_id
    x_n = (acts_ND - d.b_dec.detach()) / d.act_std.detach()
    for atom in range(0, d.cfg.d_sae, 7):
        who = d.describe(atom)
        assert who.hook == "double.0.img" and who.step is not None and who.h is not None
        row = (
            (
                (cols["prompt"] == who.prompt)
                & (cols["step"] == who.step)
                & (cols["h"] == who.h)
                & (cols["w"] == who.w)
            )
            .nonzero()
            .squeeze(1)
        )
        assert len(row) == 1
        torch.testing.assert_close(
            d.atoms[atom], torch.nn.functional.normalize(x_n[row[0]], dim=0), atol=1e-5, rtol=1e-5
        )


def test_cli_build_from_cache_then_resume_continues(flux_cache, tmp_path):
    out = tmp_path / "d"
    args = [
        "build",
        "--cache",
        str(flux_cache),
        "--target-l0",
        "4",
        "--loss-threshold",
        "0.3",
        "--batch-size",
        "64",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert itda_main([*args, "--max-atoms", "40"]) == 0
    first = itda.ITDA.load(out)
    assert first.cfg.d_sae == 40
    assert itda_main([*args, "--max-atoms", "400", "--resume"]) == 0
    resumed = itda.ITDA.load(out)
    assert resumed.cfg.d_sae > 40
    torch.testing.assert_close(resumed.W_dec[:40], first.W_dec)


def test_resuming_a_build_that_read_the_whole_cache_returns_it_unchanged(flux_cache):
    config = itda.BuildConfig(target_l0=4, loss_threshold=0.3)
    whole = build_from_cache(flux_cache, config, batch_size=64, progress=False)
    again = build_from_cache(flux_cache, config, batch_size=64, resume=whole, progress=False)
    assert again is whole


def _files(directory):
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_cli_build_killed_between_any_two_file_operations_resumes_to_the_same_bytes(flux_cache, tmp_path):
    args = ["build", "--cache", str(flux_cache), "--target-l0", "4", "--loss-threshold", "0.3",
            "--batch-size", "64", "--checkpoint-every", "2", "--no-progress"]
    assert itda_main([*args, "--out", str(tmp_path / "ref")]) == 0
    reference = _files(tmp_path / "ref")
    assert set(reference) == {"cfg.json", "sae_weights.safetensors", "itda_provenance.safetensors",
                              "sparsity.safetensors"}
    with crash_after(None):
        itda_main([*args, "--out", str(tmp_path / "count")])
        total = operations()
    for k in sorted({1, 2, total // 2, total - 3, total - 1}):
        out = tmp_path / f"killed-{k}"
        with crash_after(k), pytest.raises(InjectedCrash):
            itda_main([*args, "--out", str(out)])
        assert itda_main([*args, "--out", str(out), "--resume"]) == 0, f"resume after operation {k}"
        assert _files(out) == reference, f"killed at file operation {k} of {total}"


def test_cli_resume_names_each_setting_that_differs_in_one_line(flux_cache, tmp_path, capsys):
    out = tmp_path / "d"
    args = ["build", "--cache", str(flux_cache), "--target-l0", "4", "--out", str(out), "--no-progress"]
    with crash_after(12), pytest.raises(InjectedCrash):  # after the first checkpoint (8 operations)
        itda_main([*args, "--batch-size", "64", "--checkpoint-every", "1"])
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["batch-00000001"]
    capsys.readouterr()
    assert itda_main([*args, "--batch-size", "32", "--loss-threshold", "0.2", "--resume"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    message = lines[0]
    assert "build.loss_threshold: saved 0.3, now 0.2" in message
    assert "stream.batch_size: saved 64, now 32" in message
    assert itda_main([*args, "--batch-size", "32"]) == 2
    assert "holds an unfinished ITDA build: pass --resume" in capsys.readouterr().err


def test_two_hooks_of_one_cache_share_the_jaccard_address_space(flux_cache):
    d = build_from_cache(
        flux_cache, itda.BuildConfig(target_l0=4, loss_threshold=0.3), batch_size=64, progress=False
    )
    assert itda.jaccard(d, d) == 1.0
    assert Path(flux_cache).is_dir()


def _tiny(arch: str):
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig

    small = dict(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2)
    config = {
        "gpt2": GPT2Config(vocab_size=64, n_embd=16, n_layer=3, n_head=2),
        "llama": LlamaConfig(intermediate_size=32, **small),
        "gpt_neox": GPTNeoXConfig(intermediate_size=32, **small),
    }[arch]
    return AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gpt_neox"])
def test_itda_uses_the_one_decoder_layer_finder(arch):
    from cae.model import decoder_layers, wrap
    from cae.organism.train import build_tokenizer
    from itda.sources import lm_layers

    hf = _tiny(arch)
    lm = wrap(hf, build_tokenizer())
    path, blocks = decoder_layers(hf)
    assert len(blocks) == 3
    assert [layer._module for layer in lm_layers(lm)] == list(blocks)
    assert decoder_layers(lm) == (path, blocks)


def test_a_model_without_decoder_layers_is_named():
    from cae.model import decoder_layers

    class Odd(torch.nn.Module):
        config = type("Cfg", (), {"num_hidden_layers": 3})()

    with pytest.raises(ValueError, match="cannot find the 3 decoder blocks of Odd"):
        decoder_layers(Odd())
