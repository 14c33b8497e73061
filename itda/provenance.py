"""Where every ITDA atom came from (Leask et al., ICML 2025, arXiv 2505.17769, section 3).

An ITDA atom is a real activation, so it has an address: the stream it was read from
(``source``), the prompt index, and either a token position (language models) or a
(denoising step, timestep, h, w) position (Flux image tokens), plus the hook point. The table
is stored column-wise in ``itda_provenance.safetensors`` next to ``sae_weights.safetensors``:
int64 columns ``source``, ``prompt``, ``token``, ``step``, ``h``, ``w``, ``hook`` (indices, -1
when not applicable), a float32 ``timestep`` column (NaN when not applicable), and the string
tables ``sources`` / ``hooks`` as JSON in the safetensors metadata.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, safe_open
from torch import Tensor

import _sae_flux_shared.commit as commit

PROVENANCE_FILENAME = "itda_provenance.safetensors"
FORMAT = "itda-provenance/1"
INT_COLUMNS = ("source", "prompt", "token", "step", "h", "w", "hook")
POSITION_KEYS = ("prompt", "token", "step", "h", "w")


class AtomSource(NamedTuple):
    """The address of one atom; fields that do not apply are None.

    Example:
        >>> import torch, itda
        >>> d = itda.ITDA.build([torch.randn(64, 4)], target_l0=2, loss_threshold=0.5, progress=False)
        >>> address = d.describe(0)
        >>> address.source, address.prompt is None, isinstance(address.token, int)
        ('stream', True, True)
    """

    source: str
    """Name of the data source the atom's activation came from."""
    prompt: int | None
    """Index of the prompt (text or image caption) in that source."""
    token: int | None
    """Token position (LM sources) or the row's index in the stream when nothing else is known."""
    step: int | None
    """Denoising-step index (Flux caches)."""
    timestep: float | None
    """Scheduler timestep of that step (0..1000 scale)."""
    h: int | None
    """Row of the image token in the latent grid (Flux image streams)."""
    w: int | None
    """Column of the image token in the latent grid."""
    hook: str
    """Hook point the activation was read at."""

    def key(self) -> tuple:
        """The hook-free address, used to compare dictionaries across layers."""
        return (self.source, self.prompt, self.token, self.step, self.h, self.w)


@dataclass
class Provenance:
    """Column-wise provenance of a dictionary, one row per atom.

    Example: two atoms taken from tokens 5 and 9 of prompt 3, then one from an index-only stream:

        >>> import torch
        >>> prov = Provenance.for_batch(2, "prompts-v1", "blocks.6", {"prompt": torch.tensor([3, 3]),
        ...                             "token": torch.tensor([5, 9])}, first_index=0)
        >>> prov = prov.concat(Provenance.for_batch(1, "stream", "blocks.6", None, first_index=7))
        >>> len(prov), prov.describe(1).token, prov.describe(2).source, prov.describe(2).token
        (3, 9, 'stream', 7)
    """

    columns: dict[str, Tensor]
    """int64 columns named in ``INT_COLUMNS`` plus float32 ``timestep``, all of one length."""
    sources: list[str] = field(default_factory=list)
    """String table indexed by the ``source`` column."""
    hooks: list[str] = field(default_factory=list)
    """String table indexed by the ``hook`` column."""

    def __post_init__(self) -> None:
        lengths = {name: int(col.shape[0]) for name, col in self.columns.items()}
        missing = set(INT_COLUMNS + ("timestep",)) - set(lengths)
        if missing:
            raise ValueError(f"provenance is missing columns {sorted(missing)}")
        if len(set(lengths.values())) > 1:
            raise ValueError(f"provenance columns have different lengths: {lengths}")

    def __len__(self) -> int:
        return int(self.columns["prompt"].shape[0])

    @classmethod
    def empty(cls) -> Provenance:
        cols = {name: torch.zeros(0, dtype=torch.long) for name in INT_COLUMNS}
        cols["timestep"] = torch.zeros(0, dtype=torch.float32)
        return cls(cols)

    @classmethod
    def for_batch(
        cls, n: int, source: str, hook: str, prov: dict[str, Tensor] | None, first_index: int
    ) -> Provenance:
        """Provenance rows of one batch; without ``prov`` the token is the stream index."""
        prov = prov or {"token": torch.arange(first_index, first_index + n)}
        cols = {name: torch.full((n,), -1, dtype=torch.long) for name in INT_COLUMNS}
        for name in POSITION_KEYS:
            if name in prov:
                cols[name] = torch.as_tensor(prov[name]).reshape(-1).long().cpu()
        ts = prov.get("timestep")
        cols["timestep"] = (
            torch.as_tensor(ts).reshape(-1).float().cpu()
            if ts is not None
            else torch.full((n,), math.nan)
        )
        cols["source"] = torch.zeros(n, dtype=torch.long)
        cols["hook"] = torch.zeros(n, dtype=torch.long)
        return cls(cols, [source], [hook])

    def select(self, index: Tensor) -> Provenance:
        return Provenance(
            {k: v[index] for k, v in self.columns.items()}, list(self.sources), list(self.hooks)
        )

    def concat(self, other: Provenance) -> Provenance:
        """Rows of ``self`` followed by rows of ``other`` (string tables merged)."""
        cols = {}
        sources, hooks = list(self.sources), list(self.hooks)
        for name, col in other.columns.items():
            if name in ("source", "hook"):
                own = sources if name == "source" else hooks
                theirs = other.sources if name == "source" else other.hooks
                remap = torch.tensor([_intern(own, s) for s in theirs] or [0], dtype=torch.long)
                col = torch.where(col >= 0, remap[col.clamp(min=0)], col)
            cols[name] = torch.cat([self.columns[name], col])
        return Provenance(cols, sources, hooks)

    def describe(self, atom: int) -> AtomSource:
        if not 0 <= atom < len(self):
            raise IndexError(f"atom {atom} out of range for a dictionary of {len(self)} atoms")
        row = {k: v[atom].item() for k, v in self.columns.items()}

        def opt(name: str) -> int | None:
            return None if row[name] < 0 else int(row[name])

        ts = row["timestep"]
        return AtomSource(
            source=self.sources[int(row["source"])] if row["source"] >= 0 else "",
            prompt=opt("prompt"),
            token=opt("token"),
            step=opt("step"),
            timestep=None if math.isnan(ts) else float(ts),
            h=opt("h"),
            w=opt("w"),
            hook=self.hooks[int(row["hook"])] if row["hook"] >= 0 else "",
        )

    def keys(self) -> set[tuple]:
        """Hook-free addresses of all atoms (``AtomSource.key()`` of every row)."""
        cols = [self.columns[name].tolist() for name in ("source",) + POSITION_KEYS]
        names = [self.sources[s] if s >= 0 else "" for s in cols[0]]
        positions = [[None if v < 0 else v for v in col] for col in cols[1:]]
        return set(zip(names, *positions, strict=True))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / PROVENANCE_FILENAME
        meta = {
            "format": FORMAT,
            "sources": json.dumps(self.sources),
            "hooks": json.dumps(self.hooks),
        }
        commit.save_safetensors(path, self.columns, metadata=meta)  # header keys sorted: same bytes
        return path

    @classmethod
    def load(cls, directory: str | Path, expected_len: int) -> Provenance:
        """Read the provenance file of a dictionary directory and check its length."""
        path = Path(directory) / PROVENANCE_FILENAME
        if not path.is_file():
            raise FileNotFoundError(
                f"provenance file {path} is missing: an ITDA directory needs "
                f"{PROVENANCE_FILENAME} next to sae_weights.safetensors"
            )
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        prov = cls(
            load_file(str(path)),
            json.loads(meta.get("sources", "[]")),
            json.loads(meta.get("hooks", "[]")),
        )
        if len(prov) != expected_len:
            raise ValueError(
                f"provenance file {path} has {len(prov)} rows but the dictionary has "
                f"{expected_len} atoms"
            )
        return prov


def _intern(table: list[str], value: str) -> int:
    if value not in table:
        table.append(value)
    return table.index(value)
