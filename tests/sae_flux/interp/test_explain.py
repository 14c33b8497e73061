"""The selection rule, the VLM explainer/scorer over a chat backend, and results that survive failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sae_flux.interp.chat import BackendError
from sae_flux.interp.explain import VLMInterpreter, distractors, interpret, plan, prompt
from sae_flux.interp.index import FeatureSource, ImageBatch, IndexConfig, build_index
from sae_flux.interp.select import SelectConfig, render_card, select


@pytest.fixture()
def index(tmp_path):
    """8 images of 4x4 tokens; feature f peaks on image f with (f + 1) tokens lit, plus a weak echo."""
    acts = torch.zeros(8, 16, 8)
    for f in range(8):
        acts[f, : f + 1, f] = 10.0 + f
        acts[(f + 1) % 8, 0, f] = 1.0  # one weak token elsewhere
    source = FeatureSource("toy", "double.0.img", 8, 8, "dictionary")
    reader = build_index(IndexConfig(out=str(tmp_path / "idx"), top_n=4), source,
                         iter([ImageBatch(torch.arange(8), acts, (4, 4))]))
    reader.images_dir.mkdir()
    for i in range(8):
        Image.fromarray(np.full((16, 16, 3), 30 * i, dtype=np.uint8)).save(reader.image_path(i))
    return reader


def test_selection_ranks_by_peak_and_drops_images_with_too_few_tokens(index):
    chosen = select(index, 5, SelectConfig(min_tokens=3, threshold=0.2))
    assert chosen.images == [5]  # image 6 holds one weak token only
    assert chosen.peaks.tolist() == [15.0]
    assert chosen.maps_IHW[0].flatten()[:6].tolist() == [15.0] * 6
    assert select(index, 1, SelectConfig(min_tokens=3)).images == []
    assert select(index, 1, SelectConfig(min_tokens=1, threshold=0.0)).images == [1, 2]


def test_card_shows_one_picture_per_selected_image(index):
    card = render_card(index, select(index, 3, SelectConfig(min_tokens=1, threshold=0.0)), scale=2, title="t")
    assert card.height == 32 + 11 + 14 and card.width > 2 * 32  # colour-bar label row, title
    with pytest.raises(ValueError, match="feature 1 has no selected images"):
        render_card(index, select(index, 1, SelectConfig(min_tokens=9)))


class ScriptedChat:
    """A ChatBackend that records calls and fails on demand."""

    def __init__(self, fail_on_call=None):
        self.calls = []
        self.fail_on_call = fail_on_call

    def ask(self, system, text, images, keys):
        self.calls.append((system, text, len(images), tuple(keys)))
        if len(self.calls) == self.fail_on_call:
            raise BackendError("endpoint down")
        if "pattern" in keys:
            return {"descriptions": ["a"] * len(images), "pattern": "grey square"}
        return {"score": 0.9 if "grey" in text else 0.0}


def test_vlm_interpreter_uses_the_prompt_files_and_scores_positives_and_distractors(index, tmp_path):
    chat = ScriptedChat()
    results = interpret(index, VLMInterpreter(chat), [4], out=tmp_path / "r.jsonl",
                        select_cfg=SelectConfig(min_tokens=1, threshold=0.0), n_distractors=3)
    (result,) = results
    assert result.explanation.pattern == "grey square" and result.explanation.descriptions == ["a", "a"]
    system, text, n_images, keys = chat.calls[0]
    assert text == prompt("explain_user") and "2 generated images" in system and n_images == 2
    assert len(chat.calls) == 1 + 2 + 3  # explain, then one rating per positive and distractor
    assert all('"grey square"' in c[1] for c in chat.calls[1:])
    assert result.detection.score == pytest.approx(0.5 * (0.9 + 1 - 0.9))
    assert len(set(result.detection.negatives) & set(result.images)) == 0


def test_a_backend_failure_keeps_finished_features_and_a_rerun_continues(index, tmp_path):
    out = tmp_path / "r.jsonl"
    cfg = SelectConfig(min_tokens=1, threshold=0.0)
    with pytest.raises(BackendError, match=r"endpoint down \(feature 5; 1 finished features kept in"):
        interpret(index, VLMInterpreter(ScriptedChat(fail_on_call=8)), [4, 5], out=out, select_cfg=cfg,
                  n_distractors=3)
    assert [json.loads(line)["feature"] for line in out.read_text().splitlines()] == [4]
    chat = ScriptedChat()
    results = interpret(index, VLMInterpreter(chat), [4, 5], out=out, select_cfg=cfg, n_distractors=3)
    assert [r.feature for r in results] == [4, 5] and chat.calls[0][2] == 2  # only feature 5 was asked


def test_out_of_range_feature_is_refused_before_any_request(index):
    chat = ScriptedChat()
    with pytest.raises(IndexError, match="feature 8 is out of range"):
        interpret(index, VLMInterpreter(chat), [3, 8])
    assert chat.calls == []


def test_distractors_are_top_images_of_other_features(index):
    chosen = distractors(index, 2, exclude=[2], n=3, seed=0)
    assert len(chosen) == 3 and 2 not in chosen
    assert set(chosen) <= {int(index.top_images(f)[1][0]) for f in range(8) if f != 2}


def test_missing_distractor_images_are_made_before_the_first_request(index, tmp_path):
    cfg = SelectConfig(min_tokens=1, threshold=0.0)
    (planned,) = plan(index, [4], cfg, n_distractors=3)
    assert planned.selection.images == [4, 5] and len(planned.negatives) == 3
    for image in planned.negatives:
        index.image_path(image).unlink()
    chat = ScriptedChat()
    with pytest.raises(FileNotFoundError, match=r"3 images the interpreter would be shown are missing .*distractors"):
        interpret(index, VLMInterpreter(chat), [4], select_cfg=cfg, n_distractors=3)
    assert chat.calls == []  # nothing was spent on a run that could not finish
    made = []

    def make_images(ids):
        made.append(list(ids))
        for i in ids:
            Image.fromarray(np.full((16, 16, 3), 30 * i, dtype=np.uint8)).save(index.image_path(i))

    (result,) = interpret(index, VLMInterpreter(chat), [4], select_cfg=cfg, n_distractors=3, make_images=make_images)
    assert made == [sorted(planned.negatives)]
    assert result.detection.negatives == planned.negatives and len(chat.calls) == 1 + 2 + 3
