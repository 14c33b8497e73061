"""ITDA as a SAELens SAE (Leask, Nanda, Al Moubayed, ICML 2025, arXiv 2505.17769).

Inference-Time Decomposition of Activations: the dictionary is a set of real activations,
each normalised to unit length after a per-dimension normalisation ``(x - mean) / std``; a
token is encoded by matching pursuit or gradient pursuit for ``target_l0`` steps.

Weights (shape legend: F atoms, D model width):

- ``W_dec`` (F, D): atoms in *raw* activation units, ``atom_n * act_std``, so that
  ``decode(z) = z @ W_dec + b_dec`` as for every SAELens SAE and ``W_dec[i]`` is the direction
  a steering tool should add;
- ``b_dec`` (D,): the per-dimension mean (zeros when not normalised);
- ``act_std`` (D,): the per-dimension std (ones when not normalised).

``encode(x)`` computes ``(x - b_dec) / act_std`` and pursues with the unit atoms
``W_dec / act_std``, so raw activations go straight in: the normalisation is folded into the
weights, not into a preprocessing step the user has to repeat.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from sae_lens import SAE, SAEConfig
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from sae_lens.registry import SAE_CLASS_REGISTRY, register_sae_class
from sae_lens.saes.sae import SAEMetadata
from safetensors import SafetensorError
from torch import Tensor, nn
from typing_extensions import override

import _sae_flux_shared.commit as commit
from itda import construction, pursuit
from itda.build_config import BuildConfig
from itda.construction import BuildState, build_metadata
from itda.interop import to_matching_pursuit
from itda.provenance import PROVENANCE_FILENAME, AtomSource, Provenance
from itda.pursuit import GRAM_MAX_BYTES
from itda.registration import ARCHITECTURE, ARCHITECTURE_NAMES, SAVED_ARCHITECTURE
from itda.sparsity import FiringRates, firing_rates, save_sparsity

logger = logging.getLogger(__name__)

ENCODERS = {"mp": pursuit.matching_pursuit, "gp": pursuit.gradient_pursuit}
"""Registry of pursuit encoders by config name."""


@dataclass
class ITDAConfig(SAEConfig):
    """Config of an ITDA dictionary; ``cfg.json`` records ``registration.SAVED_ARCHITECTURE``.

    Example:
        >>> cfg = ITDAConfig(d_in=16, d_sae=64, target_l0=4, encoder="gp", nonnegative=True)
        >>> cfg.architecture(), cfg.to_dict()["architecture"].startswith("itda ("), cfg.d_sae
        ('itda', True, 64)
    """

    encoder: Literal["mp", "gp"] = "mp"
    """Pursuit used by ``encode``: matching pursuit or gradient pursuit."""
    nonnegative: bool = False
    """Only positive coefficients (the Flux work used non-negative gradient pursuit)."""
    target_l0: int = 32
    """Number of pursuit steps, i.e. the maximum number of active atoms per token."""
    candidates: int | None = None
    """Pursue only among each token's top-``candidates`` atoms (approximate, faster)."""
    normalization: Literal["none", "mean", "mean_std"] = "mean"
    """Normalisation used at construction; its statistics live in ``b_dec`` / ``act_std``."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    @override
    def to_dict(self) -> dict[str, Any]:
        """As sae_lens's, with the saved architecture name that explains itself without itda."""
        return {**super().to_dict(), "architecture": SAVED_ARCHITECTURE}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {sorted(ENCODERS)}, got {self.encoder!r}")
        if self.normalization not in ("none", "mean", "mean_std"):
            raise ValueError(f"unknown normalization {self.normalization!r}")
        if not 1 <= self.target_l0 <= self.d_sae:
            raise ValueError(
                f"target_l0={self.target_l0} is larger than the dictionary (d_sae={self.d_sae})"
                if self.target_l0 > self.d_sae
                else f"target_l0 must be >= 1, got {self.target_l0}"
            )
        if self.candidates is not None and self.candidates < self.target_l0:
            raise ValueError(
                f"candidates={self.candidates} must be at least target_l0={self.target_l0}"
            )


class ITDA(SAE[ITDAConfig]):
    """An ITDA dictionary that loads, saves and hooks like any SAELens SAE.

    Example:
        >>> import torch, itda
        >>> acts = torch.randn(512, 16)
        >>> d = itda.ITDA.build([acts[:256], acts[256:]], target_l0=4, loss_threshold=0.5,
        ...                     max_atoms=200, progress=False)
        >>> d.decode(d.encode(acts[:3])).shape
        torch.Size([3, 16])
        >>> d.describe(0).source
        'stream'
    """

    act_std: nn.Parameter
    provenance: Provenance | None
    firing: FiringRates | None
    """Atom firing rates measured by :meth:`measure_firing_rates` (saved as sparsity)."""

    def __init__(self, cfg: ITDAConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self.provenance = None
        self.firing = None
        self._cache: dict[str, tuple[Any, Tensor]] = {}

    @override
    def initialize_weights(self) -> None:
        d_in, d_sae = self.cfg.d_in, self.cfg.d_sae
        kw = {"dtype": self.dtype, "device": self.device}
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, **kw))  # type: ignore[arg-type]
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))  # type: ignore[arg-type]
        self.act_std = nn.Parameter(torch.ones(d_in, **kw))  # type: ignore[arg-type]

    @property
    def W_enc(self) -> Tensor:  # type: ignore[override]
        """Raw-space correlation weights: ``(x - b_dec) @ W_enc`` = correlations with atoms."""
        return (self.atoms / self.act_std).T

    @override
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "W_enc":  # the base class assigns W_enc; ITDA derives it
            return
        super().__setattr__(name, value)

    @property
    def atoms(self) -> Float[Tensor, "F D"]:
        """Unit-norm atoms in normalised space (cached until the weights change)."""
        return self._cached("atoms", lambda: (self.W_dec / self.act_std).detach())

    def gram(self) -> Tensor | None:
        """fp32 Gram matrix of the atoms, or None when it would exceed ``GRAM_MAX_BYTES``."""
        if 4 * self.cfg.d_sae**2 > GRAM_MAX_BYTES:
            return None
        return self._cached("gram", lambda: pursuit.gram_matrix(self.atoms))

    def _cached(self, name: str, make: Any) -> Tensor:
        stamp = (
            self.W_dec._version,
            self.act_std._version,
            self.W_dec.data_ptr(),
            self.act_std.data_ptr(),
            self.W_dec.shape,
        )
        hit = self._cache.get(name)
        if hit is None or hit[0] != stamp:
            hit = (stamp, make())
            self._cache[name] = hit
        return hit[1]

    def encode_sparse(self, x: Float[Tensor, "... D"]) -> pursuit.Pursuit:
        """Pursuit result (atom index and coefficient per step) for raw activations.

        Preferred over ``encode`` for large batches: it never builds the dense (N, F) codes.
        """
        if x.shape[-1] != self.cfg.d_in:
            raise ValueError(
                f"activation width {x.shape[-1]} differs from the dictionary width {self.cfg.d_in}"
            )
        sae_in = self.process_sae_in(x)
        x_ND = (sae_in / self.act_std).reshape(-1, self.cfg.d_in)
        use_gram = self.cfg.encoder == "mp" or self.cfg.candidates is not None
        with torch.no_grad():
            return ENCODERS[self.cfg.encoder](
                x_ND.detach(),
                self.atoms,
                self.cfg.target_l0,
                nonnegative=self.cfg.nonnegative,
                gram_FF=self.gram() if use_gram else None,
                candidates=self.cfg.candidates,
            )

    @override
    def encode(self, x: Float[Tensor, "... D"]) -> Float[Tensor, "... F"]:
        result = self.encode_sparse(x)
        codes_NF = pursuit.to_dense(result, self.cfg.d_sae).to(self.dtype)
        codes = codes_NF.reshape(*x.shape[:-1], self.cfg.d_sae)
        return self.hook_sae_acts_post(codes)

    @override
    def decode(self, feature_acts: Float[Tensor, "... F"]) -> Float[Tensor, "... D"]:
        out = feature_acts.to(self.dtype) @ self.W_dec + self.b_dec
        out = self.hook_sae_recons(out)
        out = self.run_time_activation_norm_fn_out(out)
        return self.reshape_fn_out(out, self.d_head)

    @override
    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        want = {
            "W_dec": (self.cfg.d_sae, self.cfg.d_in),
            "b_dec": (self.cfg.d_in,),
            "act_std": (self.cfg.d_in,),
        }
        for name, shape in want.items():
            if name not in state_dict:
                raise ValueError(f"ITDA weights are missing {name!r}")
            got = tuple(state_dict[name].shape)
            if got != shape:
                raise ValueError(
                    f"weight {name} has shape {got} but cfg.json (d_sae={self.cfg.d_sae}, "
                    f"d_in={self.cfg.d_in}) implies {shape}"
                )

    @override
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError("ITDA atoms are unit-norm in normalised space; nothing to fold")

    @override
    def fold_activation_whitening(
        self, mean: Tensor, whitening_matrix: Tensor, unwhitening_matrix: Tensor
    ) -> None:
        raise NotImplementedError("whitening cannot be folded into a pursuit encoder")

    @override
    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        self.W_dec.data /= scaling_factor
        self.b_dec.data /= scaling_factor
        self.act_std.data /= scaling_factor
        self.cfg.normalize_activations = "none"

    # --- provenance, save, load ---------------------------------------------------------

    def describe(self, atom: int) -> AtomSource:
        """Where atom ``atom`` came from (source, prompt, token or step/h/w, hook)."""
        if self.provenance is None:
            raise ValueError(
                "this ITDA has no provenance loaded; load it with itda.ITDA.load(path) "
                "or attach it with .load_provenance(path)"
            )
        return self.provenance.describe(atom)

    def load_provenance(self, path: str | Path) -> None:
        """Attach the provenance saved in directory ``path``."""
        self.provenance = Provenance.load(path, self.cfg.d_sae)

    def measure_firing_rates(
        self, batches: Iterable[Tensor], max_tokens: int | None = 65_536, data: str = "build data"
    ) -> FiringRates:
        """Measure (and keep, for ``save_model``) each atom's firing rate on raw ``batches``.

        Example:
            >>> import torch, itda
            >>> acts = torch.randn(256, 8)
            >>> d = itda.ITDA.build([acts], target_l0=2, loss_threshold=0.5, progress=False)
            >>> d.measure_firing_rates([acts]).tokens
            256
        """
        self.firing = firing_rates(self, batches, max_tokens, data)
        return self.firing

    @override
    def save_model(self, path: str | Path) -> tuple[Path, Path]:
        """Commit the dictionary into ``path``: weights, provenance and (when measured)
        ``sparsity.safetensors`` first, ``cfg.json`` last.

        The old ``cfg.json`` is removed before the new files arrive, so a directory with a
        ``cfg.json`` always holds one whole dictionary, whatever moment a kill strikes.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        staged = path / f"{commit.TMP_DIR_PREFIX}dictionary"
        shutil.rmtree(staged, ignore_errors=True)
        weights, cfg = super().save_model(staged)
        files = [weights]
        if self.provenance is not None:
            files.append(self.provenance.save(staged))
        else:
            logger.warning("saving an ITDA without provenance to %s", path)
        if self.firing is not None:
            files.append(save_sparsity(staged, self.firing))
        (path / cfg.name).unlink(missing_ok=True)
        commit.fault_point(f"removed {path / cfg.name}")
        for file in (*files, cfg):
            commit.commit(file, path / file.name)
        shutil.rmtree(staged)
        return path / weights.name, path / cfg.name

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: str | None = None) -> ITDA:
        """Load a saved ITDA directory with its provenance (``SAE.load_from_disk`` + checks)."""
        path = Path(path)
        cfg_path = path / SAE_CFG_FILENAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} not found: not a saved SAE directory")
        try:
            arch = json.loads(cfg_path.read_text(encoding="utf-8")).get("architecture")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
            raise ValueError(f"{cfg_path} is not a JSON object of SAE settings ({err})") from err
        if arch not in ARCHITECTURE_NAMES:
            raise ValueError(f"{cfg_path} names architecture {arch!r}, not 'itda'")
        if not (path / SAE_WEIGHTS_FILENAME).is_file():
            raise FileNotFoundError(f"{path / SAE_WEIGHTS_FILENAME} not found")
        try:
            sae = SAE.load_from_disk(path, device=device, dtype=dtype)
        except SafetensorError as err:
            raise ValueError(f"{path}: a weights file is not a readable safetensors file "
                             f"(truncated or corrupt: {err})") from err
        assert isinstance(sae, ITDA)
        sae.load_provenance(path)
        return sae

    @classmethod
    def from_pretrained_with_provenance(
        cls, repo_id: str, folder: str, device: str = "cpu", dtype: str = "float32"
    ) -> ITDA:
        """``SAE.from_pretrained(repo_id, folder)`` plus the provenance file from the Hub."""
        from huggingface_hub import hf_hub_download

        sae = SAE.from_pretrained(repo_id, folder, device=device, dtype=dtype)
        if not isinstance(sae, ITDA):
            raise ValueError(f"{repo_id}/{folder} holds a {type(sae).__name__}, not an ITDA")
        local = hf_hub_download(repo_id=repo_id, filename=f"{folder}/{PROVENANCE_FILENAME}")
        sae.load_provenance(Path(local).parent)
        return sae

    # --- construction and interop (itda.construction / itda.interop) -------------------

    @classmethod
    def build(
        cls,
        batches: Iterable[Any],
        target_l0: int = 32,
        loss_threshold: float = 0.3,
        max_atoms: int = 50_000,
        **kwargs: Any,
    ) -> ITDA:
        """Build a dictionary from a stream of activations (Algorithm 1); see ``itda.build``.

        Example:
            >>> import torch
            >>> d = ITDA.build([torch.randn(256, 8)], target_l0=2, loss_threshold=0.5, progress=False)
            >>> d.cfg.target_l0, d.cfg.d_in
            (2, 8)
        """
        options = {
            k: kwargs.pop(k) for k in ("resume", "progress", "metadata", "on_batch") if k in kwargs
        }
        config = BuildConfig(
            target_l0=target_l0, loss_threshold=loss_threshold, max_atoms=max_atoms, **kwargs
        )
        return construction.grow(batches, config, cls.from_build_state, **options)

    @classmethod
    def from_build_state(cls, state: BuildState, config: BuildConfig,
                         metadata: dict[str, Any] | None = None, allow_small: bool = False) -> ITDA:
        """The dictionary of a build's state: atoms rescaled to activation units, the stream's
        statistics, provenance, and the build recorded in ``cfg.metadata.itda_build``."""
        meta = build_metadata(state, config, metadata, allow_small)
        cfg = ITDAConfig(
            d_in=state.atoms_FD.shape[1],
            d_sae=state.size,
            encoder=config.encoder,
            nonnegative=config.nonnegative,
            target_l0=min(config.target_l0, state.size),
            candidates=None if config.candidates is None else min(config.candidates, state.size),
            normalization=config.normalization,
            apply_b_dec_to_input=True,
            device=str(state.atoms_FD.device),
            metadata=SAEMetadata(**meta),
        )
        itda = cls(cfg)
        with torch.no_grad():
            itda.W_dec.copy_(state.atoms_FD * state.std_D)
            itda.b_dec.copy_(state.mean_D)
            itda.act_std.copy_(state.std_D)
        itda.provenance = state.prov
        return itda

    def to_matching_pursuit(self, **kwargs: Any) -> SAE:
        """Export as sae_lens's built-in ``"matching_pursuit"`` SAE; see ``itda.interop``."""
        return to_matching_pursuit(self, **kwargs)


# The "itda" architecture: sae_lens's SAE.load_from_disk and SAE.from_pretrained read ITDA
# directories once this module is imported (``import itda`` arranges that: itda.registration).
for _name in ARCHITECTURE_NAMES:
    if _name not in SAE_CLASS_REGISTRY:
        register_sae_class(_name, ITDA, ITDAConfig)
