"""Export to sae_lens matching pursuit, and the provenance Jaccard index."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import itda
from itda.build import ActivationBatch


@pytest.fixture(scope="module")
def mean_only(acts):
    return {
        nonneg: itda.ITDA.build(
            acts[:1024].split(256),
            target_l0=4,
            loss_threshold=0.3,
            max_atoms=300,
            normalization="mean",
            nonnegative=nonneg,
            progress=False,
        )
        for nonneg in (False, True)
    }


def test_nonnegative_itda_exports_to_identical_matching_pursuit_codes(mean_only, acts):
    d = mean_only[True]
    mp = d.to_matching_pursuit()
    assert mp.cfg.architecture() == "matching_pursuit" and mp.cfg.d_sae == d.cfg.d_sae
    x = acts[2048:2300]
    torch.testing.assert_close(mp.encode(x), d.encode(x), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mp.decode(mp.encode(x)), d.decode(d.encode(x)), atol=1e-4, rtol=1e-4)


def test_signed_itda_exports_as_mirrored_dictionary_with_identical_reconstruction(mean_only, acts):
    d = mean_only[False]
    mp = itda.to_matching_pursuit(d)
    assert mp.cfg.d_sae == 2 * d.cfg.d_sae
    x = acts[2048:2300]
    codes = mp.encode(x)
    torch.testing.assert_close(itda.fold_mirrored_codes(codes), d.encode(x), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mp.decode(codes), d.decode(d.encode(x)), atol=1e-4, rtol=1e-4)


def test_the_default_build_exports_exactly(small_itda, acts):
    assert small_itda.cfg.normalization == "mean" and itda.export_problems(small_itda) == []
    mp = small_itda.to_matching_pursuit()
    assert mp.cfg.metadata.itda_export == {
        "exact": True, "approximate_because": [], "mirrored": True, "n_atoms": small_itda.cfg.d_sae}
    agreement = itda.compare_export(small_itda, mp, acts[2048:])
    assert agreement.tokens == 1024 and agreement.same_support == agreement.same_significant_support == 1.0
    assert agreement.max_code_error <= 1e-5 * agreement.max_code
    assert agreement.max_recon_error <= 1e-5 * agreement.max_activation


def test_per_dimension_std_export_requires_opting_into_approximation(acts):
    d = itda.ITDA.build(acts[:1024].split(512), target_l0=4, loss_threshold=0.2, max_atoms=300,
                        normalization="mean_std", progress=False)
    with pytest.raises(ValueError, match=r"would not be exact: .*per-dimension std normalisation"):
        d.to_matching_pursuit()
    mp = d.to_matching_pursuit(allow_approximate=True)
    torch.testing.assert_close(mp.W_dec.norm(dim=1), torch.ones(mp.cfg.d_sae), atol=1e-5, rtol=0)
    assert mp.cfg.metadata.itda_export["exact"] is False
    assert "per-dimension std" in mp.cfg.metadata.itda_export["approximate_because"][0]
    assert itda.compare_export(d, mp, acts[2048:]).same_support < 1.0


def test_gradient_pursuit_and_screened_exports_are_labelled_approximate(acts):
    d = itda.ITDA.build(acts[:1024].split(512), target_l0=4, loss_threshold=0.2, max_atoms=300,
                        encoder="gp", progress=False)
    with pytest.raises(ValueError, match="gradient pursuit"):
        d.to_matching_pursuit()
    assert d.to_matching_pursuit(allow_approximate=True).cfg.metadata.itda_export["exact"] is False


def test_exported_matching_pursuit_loads_in_plain_saelens_without_itda(mean_only, acts, tmp_path):
    d = mean_only[True]
    d.to_matching_pursuit().save_model(tmp_path / "mp")
    x = acts[2048:2100]
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import sys, torch, sae_lens\n"
        "sae = sae_lens.SAE.load_from_disk(sys.argv[1])\n"
        "assert 'itda' not in sys.modules, 'itda was imported'\n"
        "assert type(sae).__name__ == 'MatchingPursuitSAE'\n"
        "torch.save(sae.encode(torch.load(sys.argv[2])), sys.argv[3])\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(tmp_path / "mp"),
            str(tmp_path / "x.pt"),
            str(tmp_path / "z.pt"),
        ],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    torch.testing.assert_close(torch.load(tmp_path / "z.pt"), d.encode(x), atol=1e-5, rtol=1e-4)


def _dict_from(tokens: list[int], acts, hook: str) -> itda.ITDA:
    prov = {"prompt": torch.zeros(len(tokens), dtype=torch.long), "token": torch.tensor(tokens)}
    return itda.ITDA.build(
        [ActivationBatch(acts[tokens], prov, hook, "corpus")],
        target_l0=2,
        loss_threshold=1.0,
        seed_atoms=len(tokens),
        max_atoms=len(tokens),
        progress=False,
    )


def test_jaccard_counts_shared_addresses_across_hooks(acts):
    a = _dict_from([0, 1, 2, 3], acts, "layers.1.output")
    b = _dict_from([2, 3, 4, 5, 6, 7], acts, "layers.2.output")
    assert a.cfg.d_sae == 4 and b.cfg.d_sae == 6
    assert itda.jaccard(a, b) == pytest.approx(2 / 8)
    assert itda.jaccard(a, a) == 1.0
    assert itda.jaccard(a, _dict_from([10, 11], acts, "x")) == 0.0


def test_jaccard_needs_provenance(small_itda, tmp_path):
    small_itda.save_model(tmp_path)
    from sae_lens import SAE

    with pytest.raises(ValueError, match="jaccard needs dictionaries with provenance"):
        itda.jaccard(SAE.load_from_disk(tmp_path), small_itda)


def test_docs_example_runs(tmp_path, monkeypatch):
    """The runnable example of docs/itda.md, executed as written."""
    doc = Path(__file__).resolve().parents[2] / "docs" / "itda.md"
    code = doc.read_text().split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(doc), "exec"), {"__name__": "docs_example"})
    assert (tmp_path / "my_itda" / "itda_provenance.safetensors").is_file()
