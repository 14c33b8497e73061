"""``cae train`` / ``cae generate`` end to end on the tiny organism, and their errors."""

from __future__ import annotations

import json
import typing

import pytest

from cae import SteeringVector
from cae.cli import main
from cae.organism.corpus import items


@pytest.fixture
def kind_jsonl(tmp_path):
    f = tmp_path / "kind.jsonl"
    rows = [{"question": it.prompt, "answer_matching_behavior": " " + it.matching,
             "answer_not_matching_behavior": " " + it.not_matching}
            for it in items("kind", "ab", 24, split="train")]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def test_train_then_generate(kind_jsonl, tmp_path, capsys):
    out = tmp_path / "vec"
    assert main(["train", "--model", "organism:tiny", "--data", str(kind_jsonl),
                 "--layers", "1", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_pairs"] == 24 and set(report["norms"]) == {"1"}
    sv = SteeringVector.load(out)
    assert sv.meta.model_id == "organism:tiny" and sv.meta.read == "answer"
    assert main(["generate", "--model", "organism:tiny", "--vector", str(out),
                 "--multiplier", "2", "--prompt", "story : your friend is sad . so",
                 "--max-new-tokens", "5"]) == 0
    assert len(capsys.readouterr().out.split()) >= 1


def test_bad_inputs_exit_with_a_clear_message(kind_jsonl, tmp_path, capsys):
    assert main(["train", "--model", "organism:tiny", "--data", str(kind_jsonl),
                 "--layers", "7", "--out", str(tmp_path / "v")]) == 2
    assert "layer 7 is outside the model: it has 3 decoder blocks" in capsys.readouterr().err
    assert main(["train", "--model", "organism:tiny", "--data", str(tmp_path / "no.jsonl"),
                 "--layers", "1", "--out", str(tmp_path / "v")]) == 2
    assert "dataset file not found" in capsys.readouterr().err
    assert main(["generate", "--model", "organism:tiny", "--vector", str(tmp_path),
                 "--multiplier", "nan", "--prompt", "story :"]) == 2
    assert "multiplier must be a finite number" in capsys.readouterr().err
    assert main(["generate", "--model", "organism:huge", "--vector", str(tmp_path),
                 "--prompt", "story :"]) == 2
    assert "unknown organism size 'huge'" in capsys.readouterr().err


def test_cli_choices_are_the_registries_names(capsys):
    from cae.aggregators import AGGREGATORS
    from cae.apply import POSITIONS
    from cae.names import AGGREGATOR_NAMES, ReadRuleName
    from cae.names import POSITIONS as POSITION_NAMES
    from cae.read import READ_RULES

    assert tuple(AGGREGATORS) == AGGREGATOR_NAMES == ("mean", "pca", "logistic")
    assert POSITIONS == POSITION_NAMES == ("all", "from_prompt_end", "generated")
    assert tuple(READ_RULES) == typing.get_args(ReadRuleName) == ("answer", "last", "mean")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--aggregator {mean,pca,logistic}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = capsys.readouterr().out
    assert "--positions {all,from_prompt_end,generated}" in help_text
    assert "--operator {add,ablate,ablate_then_add,norm_preserving}" in help_text


def test_sites_operators_and_llama_cpp_files_from_the_command_line(kind_jsonl, tmp_path, capsys):
    out = tmp_path / "vec"
    assert main(["train", "--model", "organism:tiny", "--data", str(kind_jsonl), "--layers", "1",
                 "2", "--out", str(out), "--site", "mlp"]) == 0
    capsys.readouterr()
    assert SteeringVector.load(out).meta.site == "mlp"
    assert main(["generate", "--model", "organism:tiny", "--vector", str(out), "--operator",
                 "ablate_then_add", "--prompt", "story : so", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["export", "--vector", str(out), "--out", str(tmp_path / "v.gguf")]) == 2
    assert "steer block outputs; this vector's site is 'mlp'" in capsys.readouterr().err
    block = tmp_path / "block"
    assert main(["train", "--model", "organism:tiny", "--data", str(kind_jsonl), "--layers", "1",
                 "2", "--out", str(block)]) == 0
    capsys.readouterr()
    assert main(["export", "--vector", str(block), "--out", str(tmp_path / "v.gguf"),
                 "--model-hint", "llama"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == [1, 2]
    assert main(["generate", "--model", "organism:tiny", "--vector", str(tmp_path / "v.gguf"),
                 "--multiplier", "2", "--prompt", "story : so", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["generate", "--model", "organism:small", "--vector", str(tmp_path / "v.gguf"),
                 "--prompt", "story : so"]) == 2
    assert "v.gguf: directions have width 40 but LlamaForCausalLM has hidden size 80" in \
        capsys.readouterr().err
