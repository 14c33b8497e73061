"""Shared ITDA fixtures: synthetic activations made of planted directions."""

from __future__ import annotations

import pytest
import torch
from itda_synthetic import planted

import itda


@pytest.fixture(scope="session")
def acts() -> torch.Tensor:
    return planted(3072)


@pytest.fixture(scope="session")
def small_itda(acts) -> itda.ITDA:
    return itda.ITDA.build(
        acts[:2048].split(512), target_l0=4, loss_threshold=0.2, max_atoms=400, progress=False
    )
