"""Device and precision: every stage runs with the model in bfloat16; every tensor the cae
code creates names its device (so on a GPU nothing is left on the host by accident); a
device, dtype or device map the machine or model cannot take is one clear line.

No GPU is available where these tests run: device placement is checked by the policy
below (a torch function mode sees every tensor factory called from ``cae/``) and by
loading and running on ``cpu`` explicitly; CUDA itself is not exercised here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import cae
from cae.cli import main
from cae.model import check_device, input_device, load_language_model, resolve_dtype
from cae.organism.corpus import write_mwe_jsonl

CAE_DIR = str(Path(cae.__file__).parent)
FACTORIES = {torch.tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange,
             torch.randn, torch.rand, torch.randint, torch.randperm, torch.eye, torch.linspace,
             torch.as_tensor}


class FactoryDevices(TorchFunctionMode):
    """Record every tensor factory called from cae code without a ``device``."""

    def __init__(self) -> None:
        super().__init__()
        self.undeviced: set[str] = set()
        self.seen = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FACTORIES:
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(CAE_DIR) and "organism/train.py" not in caller:
                self.seen += 1
                if "device" not in kwargs:
                    frame = sys._getframe(1)
                    self.undeviced.add(f"{Path(caller).name}:{frame.f_lineno} {func.__name__}")
        return func(*args, **kwargs)


def eval_inputs(tmp_path, positions="all"):
    """Every stage of ``cae eval`` on small organism files (shared with the positions test)."""
    from cae.organism.data import write_eval_files

    d = tmp_path / "data"
    write_eval_files(d, n_ab=16, n_other=4, n_open=2, n_neutral=30)
    return ["--model", "organism:tiny", "--data", str(d / "kind-ab.jsonl"), "--corpus",
            str(d / "neutral.txt"), "--context", "8", "--max-windows", "2",
            "--multipliers", "-2", "0", "2", "--draws", "1", "--positions", positions,
            "--adversarial", "1", "--adversarial-tokens", "1", "--adversarial-top-k", "4",
            "--other-data", str(d / "kind-option.jsonl"), "--open", str(d / "kind-open.txt"),
            "--judge-fn", "cae.organism.corpus:judge_kind",
            "--prompt-instruction", "persona : warmly", "--prompt-instruction-not",
            "persona : coldly", "--prompt-examples", "1", "--prompt-separator", " <sep> ",
            "--side-data", str(d / "power-ab.jsonl"), "--capability", str(d / "quiz.jsonl")]


def test_every_stage_runs_in_bfloat16_and_names_the_device_of_what_it_creates(tmp_path):
    mode = FactoryDevices()
    with mode:
        assert main(["eval", *eval_inputs(tmp_path), "--out", str(tmp_path / "bf16"),
                     "--device", "cpu", "--dtype", "bfloat16"]) == 0
    assert mode.seen > 50 and mode.undeviced == set()
    res = json.loads((tmp_path / "bf16" / "results.json").read_text())
    assert res["config"]["placement"] == {"device": "cpu", "dtype": "bfloat16", "device_map": None}
    numbers = [res["summary"]["steerability"], *res["summary"]["mean_p_matching"].values(),
               *res["perplexity"]["perplexity"], *res["adversarial"]["propensity_after"],
               *[r["effect"] for r in res["distribution_shift"]],
               *[r["steerability"] for r in res["side_effects"]],
               *[r["effect"] for r in res["prompt_baseline"]]]
    assert all(torch.isfinite(torch.tensor(x)) for x in numbers)
    assert all(0.0 <= p <= 1.0 for p in res["summary"]["mean_p_matching"].values())


def test_the_model_loads_to_the_device_and_dtype_asked_for():
    lm = load_language_model("organism:tiny", dtype="bfloat16", device="cpu")
    assert {p.dtype for p in lm._module.parameters()} == {torch.bfloat16}
    assert input_device(lm) == torch.device("cpu")
    mapped = load_language_model("organism:tiny", device_map={"": "cpu"})
    assert input_device(mapped) == torch.device("cpu")
    assert resolve_dtype(torch.float16) is torch.float16


@pytest.mark.parametrize("flags, message", [
    (["--device", "cuda"], "device 'cuda' is not available: this machine has no CUDA device"),
    (["--device", "tpu"], "unknown device 'tpu'; use cpu, cuda[:N] or mps"),
    (["--device", "meta"], "device 'meta' holds no weights"),
    (["--dtype", "int8"], "dtype 'int8' cannot hold a model's weights here; choose from"),
    (["--device", "cpu", "--device-map", "auto"], "give a device or a device_map, not both"),
    (["--device-map", "{oops"], "device_map is not valid JSON"),
    (["--positions", "middle"], "unknown positions 'middle'"),
    (["--layers", "7"], "layer 7 is outside the model: it has 3 decoder blocks"),
    (["--adversarial", "2", "--adversarial-top-k", "8", "--adversarial-budget", "5"],
     "adversarial budget of 5 forward rows per item is too small to run"),
])
def test_what_the_machine_or_model_cannot_take_is_one_clear_line(tmp_path, capsys, flags,
                                                                  message):
    write_mwe_jsonl(str(tmp_path / "kind.jsonl"), "kind", n=8)
    assert main(["eval", "--model", "organism:tiny", "--data", str(tmp_path / "kind.jsonl"),
                 "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line and not line.startswith("Loading weights")]
    assert lines == [lines[0]] and message in lines[0] and lines[0].startswith("cae eval: error:")
    assert not (tmp_path / "o" / "vector").exists()


def test_a_gpu_that_is_missing_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match="device 'cuda:3' does not exist: this machine has 1 "
                                         "CUDA device"):
        check_device("cuda:3")
