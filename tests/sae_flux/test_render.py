"""Heatmap overlays put the heat where the activation is."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_flux.interp.render import heat_alpha, overlay, strip


def test_overlay_puts_heat_on_the_planted_token_only():
    image = torch.zeros(3, 32, 32)
    heat = torch.zeros(8, 8)
    heat[2, 5] = 3.0
    pixels = np.asarray(overlay(image, heat, scale=1, colorbar=False)).astype(int)
    assert pixels.shape == (32, 32, 3)
    lit = pixels.sum(-1) > 0
    rows, cols = np.nonzero(lit)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 11, 20, 23)


def test_alpha_follows_sqrt_of_normalised_activation():
    image = torch.zeros(3, 4, 4)
    heat = torch.tensor([[0.0, 0.25], [1.0, -2.0]])
    pixels = np.asarray(overlay(image, heat, scale=1, colorbar=False, cmap="gray")).astype(float) / 255
    # on black, gray colormap value v with alpha sqrt(v) gives v * sqrt(v)
    assert pixels[0, 2, 0] == pytest.approx(0.25 * 0.5, abs=2 / 255)
    assert pixels[2, 0, 0] == pytest.approx(1.0, abs=1 / 255)
    assert pixels[2, 2].sum() == 0 and pixels[0, 0].sum() == 0


def test_colorbar_and_vmax():
    card = overlay(torch.rand(3, 32, 32), torch.rand(8, 8), scale=4)
    assert card.height == 128 and card.width > 128
    assert torch.equal(heat_alpha(torch.tensor([[2.0]]), vmax=4.0), torch.tensor([[0.5]]))
    assert heat_alpha(torch.zeros(2, 2)).sum() == 0


def test_strip_rejects_nothing_to_show():
    with pytest.raises(ValueError, match="at least one picture"):
        strip([])
