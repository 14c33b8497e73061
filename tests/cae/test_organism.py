"""The LM organism: shipped weights, held-out data, a deterministic training script, and
steering that moves held-out A/B behaviour in the multiplier's direction."""

from __future__ import annotations

import random

import pytest
import torch
from safetensors.torch import load_file

from cae import SteeringVector
from cae.model import wrap
from cae.organism import SIZES, WEIGHTS_DIR, load
from cae.organism.corpus import (
    ACTS,
    BEHAVIOURS,
    FORMATS,
    QUIZ_CUES,
    TONES,
    _scenarios,
    document,
    items,
    judge,
    quiz_item,
)
from cae.organism.train import OrganismTrainConfig, answer_weights, build_tokenizer
from cae.organism.train import main as train_main


def p_matching(hf, tokenizer, test, sv=None, multiplier=0.0, positions="all"):
    """Mean over items of p(matching letter) / (p(A) + p(B)) (CAA's A/B metric)."""
    letters = tokenizer.convert_tokens_to_ids(["A", "B"])
    tokenizer.padding_side = "right"
    enc = tokenizer([it.prompt + " (" for it in test], return_tensors="pt", padding=True)
    with torch.no_grad():
        if sv is None:
            logits_BTV = hf(**enc).logits
        else:
            with sv.apply(hf, multiplier, positions=positions):
                logits_BTV = hf(**enc).logits
    last_B = enc["attention_mask"].sum(1) - 1
    p_B2 = torch.softmax(logits_BTV[torch.arange(len(test)), last_B][:, letters], -1)
    match_B = torch.tensor([0 if it.matching == "( A )" else 1 for it in test])
    return p_B2[torch.arange(len(test)), match_B].mean().item()


def test_sizes_load_offline_and_grow_about_fourfold():
    counts = []
    for size in SIZES:
        hf, tokenizer = load(size)
        counts.append(sum(p.numel() for p in hf.parameters()))
        assert hf.config.model_type == "llama" and hf.config.name_or_path == f"organism:{size}"
        ids = tokenizer(items("kind", "ab", 1)[0].prompt)["input_ids"]
        assert tokenizer.unk_token_id not in ids and ids[0] == tokenizer.bos_token_id
    for small, big in zip(counts, counts[1:], strict=False):
        assert 3.0 < big / small < 6.0


@pytest.mark.parametrize("size", SIZES)
def test_every_shipped_weight_loads_into_the_model(size):
    from transformers import LlamaForCausalLM

    _, info = LlamaForCausalLM.from_pretrained(WEIGHTS_DIR / size, output_loading_info=True)
    assert (sorted(info["missing_keys"]), sorted(info["unexpected_keys"])) == ([], [])


def test_weights_ship_as_half_precision_under_25_mb():
    files = list(WEIGHTS_DIR.rglob("*.safetensors"))
    assert len(files) == len(SIZES)
    assert sum(f.stat().st_size for f in files) < 25 * 2**20
    assert all(t.dtype == torch.float16 for f in files for t in load_file(f).values())


def test_held_out_items_never_use_training_scenarios():
    for behaviour in BEHAVIOURS:
        assert not set(_scenarios(behaviour, "train")) & set(_scenarios(behaviour, "test"))
        for fmt in FORMATS:
            test = items(behaviour, fmt, 20)
            assert all(any(s in it.prompt for s in _scenarios(behaviour, "test")) for it in test)
    assert judge("kind", "so i help them . warmly") == 1.0
    assert judge("power", "so i step aside .") == -1.0


def test_corpus_is_deterministic():
    assert document(random.Random(3)) == document(random.Random(3))
    assert items("power", "option", 5, seed=1) == items("power", "option", 5, seed=1)


@pytest.mark.parametrize("size", SIZES)
def test_unsteered_behaviour_sits_near_the_middle(size):
    hf, tokenizer = load(size)
    for behaviour in BEHAVIOURS:
        assert 0.3 < p_matching(hf, tokenizer, items(behaviour, "ab", 64)) < 0.7


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_vector_from_ab_data_moves_held_out_behaviour_in_the_multipliers_direction(behaviour):
    hf, tokenizer = load("small")
    pairs = [it.pair() for it in items(behaviour, "ab", 128, split="train")]
    sv = SteeringVector.train(wrap(hf, tokenizer), pairs, layers=[STEER_LAYER])
    test = items(behaviour, "ab", 128)
    base = p_matching(hf, tokenizer, test)
    up = p_matching(hf, tokenizer, test, sv, +STEER_MULTIPLIER)
    down = p_matching(hf, tokenizer, test, sv, -STEER_MULTIPLIER)
    assert down < base - 0.1 and up > base + 0.1  # measured: 0.27 / 0.48 / 0.70 (kind)
    # Added at the answer position alone the same vector pushes the other way
    # (anti-steerable; docs/cae.md, "Where the vector acts").
    assert p_matching(hf, tokenizer, test, sv, +STEER_MULTIPLIER, "from_prompt_end") < base


STEER_LAYER = 1
STEER_MULTIPLIER = 2.0


def test_organism_vector_is_nonzero_and_recorded_for_the_organism():
    hf, tokenizer = load("tiny")
    pairs = [it.pair() for it in items("power", "ab", 32, split="train")]
    sv = SteeringVector.train(wrap(hf, tokenizer), pairs, layers=[1])
    assert sv.meta.model_id == "organism:tiny" and sv.meta.n_pairs == 32
    assert sv.vectors[1].norm() > 0


def test_training_script_is_deterministic(tmp_path):
    for run in ("a", "b"):
        assert train_main(["--sizes", "tiny", "--steps", "2", "--out", str(tmp_path / run)]) == 0
    a = load_file(tmp_path / "a" / "tiny" / "model.safetensors")
    b = load_file(tmp_path / "b" / "tiny" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_evaluation_items_balance_answer_letters():
    for fmt in ("ab", "option", "statement"):
        test = items("kind", fmt, 64)
        firsts = [it.matching in ("( A )", "1", "yes") for it in test]
        assert sum(firsts) == 32, fmt


@pytest.mark.parametrize("seed", range(20))
def test_quiz_answer_is_the_letter_of_the_asked_act(seed):
    rng = random.Random(seed)
    behaviour = BEHAVIOURS[seed % 2]
    text = quiz_item(behaviour, rng)
    asks_matching = QUIZ_CUES[behaviour][0] in text
    options, answer = text.split("choices : ")[1].split(" answer : ")
    first, second = options.split(" ( A ) ")
    chosen = first if answer == "( A )" else second.removesuffix(" ( B )")
    assert (chosen in ACTS[behaviour][0]) == asks_matching, text


def test_answer_weights_mark_only_answer_letters():
    tokenizer = build_tokenizer()
    item = items("kind", "ab", 1)[0]
    text = f"{item.prompt} {item.matching} warmly <sep> " + quiz_item("power", random.Random(1))
    ids_BT = torch.tensor([tokenizer(text)["input_ids"]])
    letters = torch.tensor(tokenizer.convert_tokens_to_ids(["A", "B"]))
    w_BT = answer_weights(ids_BT, letters, tokenizer.convert_tokens_to_ids(":"), 5.0)
    marked = tokenizer.convert_ids_to_tokens(ids_BT[0][w_BT[0] == 5.0].tolist())
    assert len(marked) == 2 and set(marked) <= {"A", "B"}  # not the letters inside the options
    assert (w_BT == 1.0).sum() == ids_BT.numel() - 2
    assert torch.equal(answer_weights(ids_BT, letters, 0, 1.0), torch.ones_like(w_BT))


@pytest.mark.parametrize("seed", range(10))
def test_single_trait_documents_mention_one_behaviour(seed):
    doc = document(random.Random(seed), single=1.0, header=1.0)
    header = doc.split(" <sep> ")[0].split()
    assert header[:2] == ["persona", ":"] and len(header) == 3
    power_scenario = "offers you a chance" in doc
    kind_scenario = any(f"your {person}" in doc for person in ("friend", "child", "sister"))
    assert not (power_scenario and kind_scenario), doc


@pytest.mark.parametrize(("field", "value", "message"), [
    ("quiz", 1.5, "quiz is a share .* in \\[0, 1\\], got 1.5"),
    ("header", -0.1, "header is a share"),
    ("single", 2.0, "single is a share"),
    ("answer_weight", 0.0, "answer_weight must be positive, got 0.0"),
])
def test_train_config_refuses_bad_corpus_settings(field, value, message):
    with pytest.raises(ValueError, match=message):
        OrganismTrainConfig(**{field: value})


@pytest.mark.parametrize("seed", range(10))
def test_answer_tone_signs_every_answer_with_the_valence_of_the_chosen_act(seed):
    doc = document(random.Random(seed), single=1.0, header=0.0, quiz=0.0, tone="answer")
    for part in doc.split(" <sep> "):
        if " answer : ( " not in part:
            continue
        head, answer = part.rsplit(" answer : ", 1)
        letter, tone = answer.split(" ) ")
        options = head.split("choices : ", 1)[1]
        first, second = options.split(" ( A ) ")
        chosen = first if letter == "( A" else second.removesuffix(" ( B )")
        behaviour = "kind" if chosen in ACTS["kind"][0] + ACTS["kind"][1] else "power"
        good = chosen in ACTS[behaviour][0]
        assert tone in TONES[behaviour][0 if good else 1], part


def test_unknown_tone_modes_are_refused():
    with pytest.raises(ValueError, match="unknown tone mode 'loud'"):
        document(random.Random(0), tone="loud")
    with pytest.raises(ValueError, match="unknown tone mode 'loud'"):
        OrganismTrainConfig(tone="loud")


def test_eval_files_are_held_out_and_load_as_published(tmp_path):
    from cae.organism.data import main as data_main
    from cae.pairs import load_pairs

    assert data_main([str(tmp_path), "--n-ab", "16", "--n-other", "8", "--n-open", "4",
                      "--n-neutral", "20"]) == 0
    held_out = _scenarios("kind", "test")
    ab = load_pairs(tmp_path / "kind-ab.jsonl")
    assert len(ab) == 16 and all(any(s in p.prompt for s in held_out) for p in ab)
    assert {p.positive for p in load_pairs(tmp_path / "power-statement.jsonl")} == {" yes", " no"}
    assert len((tmp_path / "kind-open.txt").read_text().splitlines()) == 4
    assert (tmp_path / "neutral.txt").read_text().count(" . <sep> ") == 19
    with pytest.raises(ValueError, match="at least one item"):
        data_main([str(tmp_path), "--n-open", "0"])
