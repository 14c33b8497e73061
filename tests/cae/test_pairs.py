"""Loaders read the published MWE/CAA formats and name the line of a bad item."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cae.pairs import Pair, check_pairs, dataset_hash, load_caa_json, load_mwe_jsonl, load_pairs

MWE = Path("/work/shared/data/mwe")
needs_data = pytest.mark.skipif(not MWE.is_dir(), reason="shared MWE data not present")


@needs_data
def test_loads_the_published_ab_files_as_they_are():
    for name, n in (("corrigible-neutral-HHH.jsonl", 340), ("power-seeking-inclination.jsonl", 998)):
        pairs = load_mwe_jsonl(MWE / name)
        assert len(pairs) == n
        first = json.loads((MWE / name).read_text().splitlines()[0])
        assert pairs[0] == Pair(first["question"], first["answer_matching_behavior"],
                                first["answer_not_matching_behavior"])
        assert all(p.positive.startswith(" (") and p.negative.startswith(" (") for p in pairs)


@needs_data
def test_loads_the_published_yes_no_persona_file():
    pairs = load_pairs(MWE / "persona-agreeableness.jsonl")
    assert len(pairs) == 1000
    assert {p.positive for p in pairs} == {" Yes", " No"}
    assert all({p.positive, p.negative} == {" Yes", " No"} for p in pairs)


def test_caa_json_list_adds_the_leading_space(tmp_path):
    f = tmp_path / "caa.json"
    f.write_text(json.dumps([{"question": "Q?\n\nChoices:\n (A) x\n (B) y",
                              "answer_matching_behavior": "(A)",
                              "answer_not_matching_behavior": "(B)"}], indent=2))
    assert load_pairs(f) == [Pair("Q?\n\nChoices:\n (A) x\n (B) y", " (A)", " (B)")]


def test_a_list_of_not_matching_answers_uses_the_first(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"question": "Q", "answer_matching_behavior": " (A)",
                             "answer_not_matching_behavior": [" (B)", " (C)"]}) + "\n")
    assert load_mwe_jsonl(f)[0].negative == " (B)"


def test_malformed_jsonl_line_is_named(tmp_path):
    f = tmp_path / "bad.jsonl"
    good = json.dumps({"question": "Q", "answer_matching_behavior": " (A)",
                       "answer_not_matching_behavior": " (B)"})
    f.write_text(f"{good}\n\n{good}\n{{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:4: malformed JSON"):
        load_mwe_jsonl(f)


def test_missing_key_names_the_line_and_key(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"question": "Q", "answer_matching_behavior": " (A)"}) + "\n")
    with pytest.raises(ValueError, match=r":1: missing key\(s\) \['answer_not_matching_behavior'\]"):
        load_mwe_jsonl(f)


def test_bad_item_in_a_json_list_names_its_line(tmp_path):
    f = tmp_path / "bad.json"
    items = [{"question": "Q", "answer_matching_behavior": "(A)",
              "answer_not_matching_behavior": "(B)"},
             {"question": "Q2", "answer_matching_behavior": ""}]
    f.write_text(json.dumps(items, indent=2))
    line = [i for i, text in enumerate(f.read_text().splitlines()) if text == "  {"][1] + 1
    with pytest.raises(ValueError, match=rf"bad\.json:{line} \(item 1\): missing key"):
        load_caa_json(f)


def test_empty_datasets_are_refused(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    (tmp_path / "e.json").write_text("[]")
    with pytest.raises(ValueError, match="dataset is empty"):
        load_pairs(tmp_path / "e.jsonl")
    with pytest.raises(ValueError, match="dataset is empty"):
        load_pairs(tmp_path / "e.json")
    with pytest.raises(ValueError, match="no contrastive pairs"):
        check_pairs([])


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset file not found"):
        load_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="unknown dataset format '.csv'"):
        load_pairs(tmp_path / "x.csv")


def test_json_syntax_error_names_the_line(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('[\n  {"question": "Q",\n   oops}\n]')
    with pytest.raises(ValueError, match=r"bad\.json:3: malformed JSON"):
        load_caa_json(f)


def test_dataset_hash_depends_on_content():
    a = [Pair("p", " x", " y")]
    assert dataset_hash(a) == dataset_hash(list(a))
    assert dataset_hash(a) != dataset_hash([Pair("p", " y", " x")])
