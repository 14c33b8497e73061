"""Shared fixtures: tiny models are built once per session, offline."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_flux():
    from sae_flux import Flux

    return Flux.tiny(seed=0)
