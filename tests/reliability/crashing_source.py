"""An activation source that stops mid-stream, as a killed training run would (shared by the
single-process and the data-parallel resume tests)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from sae_flux.sources import TensorSource


class Crash(Exception):
    """The simulated kill."""


class CrashingSource(TensorSource):
    """Raises :class:`Crash` after ``after`` batches of any stream longer than the normalisation read."""

    def __init__(self, acts_ND: torch.Tensor, after: int) -> None:
        super().__init__(acts_ND)
        self.after = after

    def batches(self, batch_size: int, seed: int = 0, buffer_tokens: int = 0,
                epochs: int | None = 1) -> Iterator[torch.Tensor]:
        for i, batch in enumerate(super().batches(batch_size, seed, buffer_tokens, epochs)):
            if i == self.after:
                raise Crash(f"killed after {i} batches")
            yield batch
