"""Pairs built with a chat template (with the plain-text fallback), the answer position per
pair, and ``record``: activations of arbitrary prompts with their padding mask."""

from __future__ import annotations

import pytest
import torch

from cae import Pair, SteeringVector
from cae.pairs import chat_pairs, chat_prompt
from cae.recording import record
from cae.train import answer_positions

TEMPLATE = ("{% for m in messages %}{{ m.role }} : {{ m.content }} {% endfor %}"
            "{% if add_generation_prompt %}answer :{% endif %}")
MWE = [Pair("your friend is sad . choices : ( A ) i help them ( B ) i ignore them", "( A )",
            "( B )"),
       Pair("your child is lost .", " ( B )", " ( A )")]


@pytest.fixture
def chat_tokenizer(tokenizer):
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def test_pairs_take_the_chat_template_and_record_the_answer_position(chat_tokenizer):
    pairs = chat_pairs(chat_tokenizer, MWE, system="be kind .")
    assert pairs[1] == Pair("system : be kind . user : your child is lost . answer :",
                            " ( B )", " ( A )")
    positions = answer_positions(chat_tokenizer, pairs)
    for pair, at in zip(pairs, positions, strict=True):
        ids = chat_tokenizer(pair.prompt + pair.positive)["input_ids"]
        prompt_len = len(chat_tokenizer(pair.prompt)["input_ids"])
        assert prompt_len <= at.positive < len(ids)  # inside the assistant's answer
    assert [(p.positive_token, p.negative_token) for p in positions] == [("A", "B"), ("B", "A")]


def test_without_a_template_the_text_stays_plain_unless_one_is_required(tokenizer):
    assert tokenizer.chat_template is None
    assert chat_pairs(tokenizer, MWE) == MWE  # fallback: the pairs as they are
    assert chat_prompt(tokenizer, "hi", system="be kind .") == "be kind .\n\nhi"
    with pytest.raises(ValueError, match=r"^tokenizer '.*' has no chat template "
                                         r"\(tokenizer.chat_template is unset\); pass "
                                         r"template=False for plain text or set one$"):
        chat_pairs(tokenizer, MWE, template=True)


def test_template_false_ignores_a_template(chat_tokenizer):
    assert chat_pairs(chat_tokenizer, MWE, template=False) == MWE


def test_a_chat_vector_trains_on_the_templated_texts(lm, chat_tokenizer):
    lm.tokenizer.chat_template = TEMPLATE
    sv = SteeringVector.train(lm, chat_pairs(lm.tokenizer, MWE), layers=[1])
    plain = SteeringVector.train(lm, MWE, layers=[1])
    assert not torch.allclose(sv.vectors[1], plain.vectors[1])


PROMPTS = ["story : your friend is sad . so", "q : hi", "question : your child is lost ."]


@pytest.mark.parametrize("side", ["left", "right"])
def test_record_returns_each_prompts_activations_with_its_mask(lm, hf_model, side):
    rec = record(lm, PROMPTS, layers=[1, 3], padding_side=side)
    assert rec.mask_BT.sum(1).tolist() == [len(lm.tokenizer(p)["input_ids"]) for p in PROMPTS]
    assert set(rec.acts) == {1, 3} and rec.acts[1].shape[:2] == rec.mask_BT.shape
    seen = []
    handle = hf_model.model.layers[3].register_forward_hook(lambda _m, _i, o: seen.append(o[0]))
    with torch.no_grad():
        for prompt in PROMPTS:
            hf_model(**lm.tokenizer(prompt, return_tensors="pt"))
    handle.remove()
    for b, alone_TD in enumerate(seen):
        real = rec.mask_BT[b].bool()
        torch.testing.assert_close(rec.acts[3][b][real], alone_TD, atol=1e-5, rtol=1e-5)


def test_record_reads_other_sites_and_refuses_bad_input(lm, hf_model):
    rec = record(lm, PROMPTS[:1], layers=[2], site="mlp")
    seen = []
    handle = hf_model.model.layers[2].mlp.register_forward_hook(
        lambda _m, _i, out: seen.append(out[0]))
    with torch.no_grad():
        hf_model(**lm.tokenizer(PROMPTS[0], return_tensors="pt"))
    handle.remove()
    torch.testing.assert_close(rec.acts[2][0], seen[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layer 9 is outside the model"):
        record(lm, PROMPTS, layers=[9])
    with pytest.raises(ValueError, match="non-empty list of prompts"):
        record(lm, "one string", layers=[1])
