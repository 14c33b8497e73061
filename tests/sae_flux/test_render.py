"""Heatmap overlays put the heat where the activation is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_flux.interp.render import DIM, MAX_ALPHA, heat_alpha, overlay, spotlight, strip


def test_overlay_puts_heat_on_the_planted_token_only():
    image = torch.zeros(3, 32, 32)
    heat = torch.zeros(8, 8)
    heat[2, 5] = 3.0
    pixels = np.asarray(overlay(image, heat, scale=1, colorbar=False)).astype(int)
    assert pixels.shape == (32, 32, 3)
    lit = pixels.sum(-1) > 0
    rows, cols = np.nonzero(lit)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 11, 20, 23)


def test_alpha_follows_sqrt_of_normalised_activation_and_stays_semi_transparent():
    image = torch.zeros(3, 4, 4)
    heat = torch.tensor([[0.0, 0.25], [1.0, -2.0]])
    pixels = np.asarray(overlay(image, heat, scale=1, colorbar=False, cmap="gray")).astype(float) / 255
    # on black, gray colormap value v with alpha MAX_ALPHA * sqrt(v) gives MAX_ALPHA * v * sqrt(v)
    assert pixels[0, 2, 0] == pytest.approx(MAX_ALPHA * 0.25 * 0.5, abs=2 / 255)
    assert pixels[2, 0, 0] == pytest.approx(MAX_ALPHA, abs=1 / 255)
    assert pixels[2, 2].sum() == 0 and pixels[0, 0].sum() == 0


def test_the_image_shows_through_the_strongest_activation():
    white = torch.ones(3, 4, 4)
    pixels = np.asarray(overlay(white, torch.ones(2, 2), scale=1, colorbar=False, cmap="gray")).astype(float) / 255
    assert pixels.min() == pytest.approx(1.0, abs=1 / 255)  # gray(1) = white: blending keeps white
    black_map = np.asarray(overlay(white, torch.ones(2, 2), scale=1, colorbar=False, cmap="binary")).astype(float)
    assert black_map.max() / 255 == pytest.approx(1 - MAX_ALPHA, abs=1 / 255)  # 35% of the white image remains


def test_spotlight_darkens_everything_outside_the_mask():
    mask = torch.zeros(2, 2, dtype=torch.bool)
    mask[0, 1] = True
    pixels = np.asarray(spotlight(torch.ones(3, 4, 4), mask, scale=1)).astype(float) / 255
    assert pixels[:2, 2:].min() == 1.0
    assert pixels[2:, :].max() == pytest.approx(DIM, abs=1 / 255) and pixels[:2, :2].max() == pytest.approx(DIM, abs=1 / 255)


def test_colorbar_is_labelled_and_vmax():
    card = overlay(torch.rand(3, 32, 32), torch.rand(8, 8), scale=4)
    assert card.height == 128 + 11 and card.width > 128
    title = np.asarray(card)[:11, 128:]
    assert (title < 128).any()  # the "activation" label above the bar
    assert torch.equal(heat_alpha(torch.tensor([[2.0]]), vmax=4.0), torch.tensor([[0.5]]))
    assert heat_alpha(torch.zeros(2, 2)).sum() == 0


def test_strip_rejects_nothing_to_show():
    with pytest.raises(ValueError, match="at least one picture"):
        strip([])
