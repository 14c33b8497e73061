"""SAE training on Flux activations with sae_lens's own ``SAETrainer`` (Shabalin et al. 2025).

Follows arXiv 2505.24360 (``../shared/research.md`` section 1): a TopK SAE (k = 64 by default) on
the image stream of a block's residual output, Adam with beta1 = 0 and beta2 = 0.99, the decoder
bias initialised to the data mean, and the normalisation that decides whether the SAE lives or
dies (:mod:`sae_flux.normalize`: none / per-dimension standardisation / PCA whitening from the
first N tokens). Any architecture of sae_lens's TRAINING registry can be chosen by name.

The loop is sae_lens's: ``SAETrainer.step`` (its public seam for external coordinators) does the
forward pass, losses, dead-latent bookkeeping and the optimiser step; this module adds what
``SAETrainer.fit`` only does through wandb: a JSONL metrics log, periodic crash-safe checkpoints
with resume, a NaN guard, and the project's metrics on raw activations (:mod:`sae_flux.metrics`).
At the end the normalisation is folded into the weights with sae_lens's own
``fold_activation_whitening``, so the saved directory is a plain SAELens SAE over raw activations.

Under a launcher (``torchrun --nproc_per_node N -m sae_flux.cli train ...``, or ``train_sae``
called in a script that torchrun started) the same call trains data-parallel
(:mod:`sae_flux.data_parallel`): every rank holds the whole SAE and trains on its slice of each
global batch with gradients averaged before the step, so N ranks equal one process; rank 0 alone
writes the log, the checkpoints and the dictionary, into an ``out`` every rank sees.

Output directory::

    cfg.json, sae_weights.safetensors   # SAE.load_from_disk(out) -> reconstructs raw activations
    sparsity.safetensors                # log10 feature density (SAELens format)
    metrics.json                        # FVU, explained variance, L0, dead fraction (+ window)
    train_config.json                   # this module's TrainConfig, the record of the run
    log.jsonl                           # one line per logged step
    checkpoints/step-XXXXXXXX/          # sae_lens checkpoint + train_config.json (for resume)

Example:
    >>> cfg = TrainConfig(out="sae", data=DataConfig(cache="cache"),  # doctest: +SKIP
    ...                   optim=OptimConfig(total_tokens=2_000_000, batch_size=4096))
    >>> result = train_sae(cfg)  # doctest: +SKIP
    >>> result.metrics.fvu  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from sae_lens import SAE, BatchTopKTrainingSAE, TrainingSAE
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import SAEMetadata, TrainStepOutput
from sae_lens.training.sae_trainer import SAETrainer
from tqdm.auto import tqdm

import _sae_flux_shared.commit as commit
from _sae_flux_shared.usererror import UserError
from sae_flux import data_parallel, distributed, normalize
from sae_flux.metrics import DictionaryMetrics, evaluate
from sae_flux.sources import ActivationSource, FluxStream
from sae_flux.train_config import (
    RUN_ONLY_FIELDS,
    DataConfig,
    DictionaryConfig,
    OptimConfig,
    TrainConfig,
    dead_window_tokens,
)

__all__ = ["DataConfig", "DictionaryConfig", "OptimConfig", "TrainConfig", "TrainResult", "train_sae"]

logger = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"
LOG_FILE = "log.jsonl"
CHECKPOINTS = "checkpoints"


class TrainResult(NamedTuple):
    """What :func:`train_sae` returns."""

    path: Path
    sae: SAE[Any]
    """The saved dictionary as plain sae_lens loads it (over raw activations)."""
    metrics: DictionaryMetrics
    steps: int


# -- data -------------------------------------------------------------------------------------


class _Data(NamedTuple):
    source: ActivationSource
    hook: str
    model_id: str
    description: str


def open_data(cfg: DataConfig) -> _Data:
    """The activation source named by ``cfg``, checked against ``cfg.d_in``."""
    from sae_flux.cache import CacheReader, load_flux, read_prompts

    if cfg.cache is not None:
        reader = CacheReader(cfg.cache, hook=cfg.hook)
        data = _Data(reader, reader.hook, reader.manifest.model_id,
                      f"activation cache {cfg.cache} ({reader.num_tokens} tokens)")
    elif cfg.model is None or cfg.prompts is None or cfg.hook is None:
        raise ValueError(
            "no training data: give --cache DIR, or --model, --prompts and --hook to stream from a Flux"
        )
    else:
        flux = load_flux(cfg.model)
        prompts = read_prompts(cfg.prompts)
        stream = FluxStream(flux, prompts, cfg.hook, cfg.num_inference_steps)
        data = _Data(stream, cfg.hook, flux.model_id, f"streamed from {cfg.prompts} ({len(prompts)} prompts)")
    check_width(data.source, cfg.d_in, cfg.cache or cfg.model or "")
    return data


def check_width(source: ActivationSource, d_in: int | None, where: str) -> None:
    if d_in is not None and source.d_model != d_in:
        raise ValueError(
            f"the data in {where} has d_model {source.d_model} but the config says d_in={d_in}"
        )


def fit_to_data(cfg: TrainConfig, source: ActivationSource, where: str) -> TrainConfig:
    """``cfg``, with ``total_tokens`` cut to ``optim.max_epochs`` passes over data of fixed size (warned).

    A streamed source (``num_tokens`` is ``None``) makes fresh data every pass and is not capped.
    The cut config is the one recorded (``train_config.json``), so a resumed run agrees with it.
    """
    optim = cfg.optim
    num_tokens = getattr(source, "num_tokens", None)  # a source without it is taken for a stream
    if num_tokens is None or optim.total_tokens <= optim.max_epochs * num_tokens:
        return cfg
    steps = max(1, optim.max_epochs * num_tokens // optim.batch_size)
    logger.warning(
        "total_tokens %s would be %.0f passes over %s; training stops at max_epochs=%d passes: %s "
        "tokens (%d steps of %d). Raise --max-epochs or add data to train longer",
        f"{optim.total_tokens:,}", optim.total_tokens / num_tokens, where,
        optim.max_epochs, f"{steps * optim.batch_size:,}", steps, optim.batch_size,
    )
    return dataclasses.replace(cfg, optim=dataclasses.replace(optim, total_tokens=steps * optim.batch_size))


def _take_tokens(batches: Iterator[torch.Tensor], n: int) -> torch.Tensor:
    parts, held = [], 0
    for batch in batches:
        parts.append(batch[: n - held])
        held += parts[-1].shape[0]
        if held >= n:
            break
    if not parts:
        raise ValueError("the data source yielded no activations")
    return torch.cat(parts).float()


# -- building ---------------------------------------------------------------------------------


def build_sae(cfg: TrainConfig, d_in: int, hook: str, model_id: str) -> TrainingSAE[Any]:
    """A fresh training SAE of ``cfg.sae.architecture`` from sae_lens's training registry."""
    sae_cls, cfg_cls = SAE_TRAINING_CLASS_REGISTRY[cfg.sae.architecture]
    d_sae = cfg.sae.d_sae or cfg.sae.expansion_factor * d_in
    metadata = SAEMetadata(model_name=model_id, hook_name=hook, normalization=cfg.sae.normalize)
    kwargs = cfg.sae.sae_kwargs()
    if cfg.sae.normalize != "none":
        _check_foldable(sae_cls, cfg_cls(d_in=d_in, d_sae=d_sae, device="meta", **kwargs), cfg.sae)
    sae_cfg = cfg_cls(d_in=d_in, d_sae=d_sae, device=cfg.device, metadata=metadata, **kwargs)
    torch.manual_seed(cfg.optim.seed)
    return sae_cls(sae_cfg)


def _check_foldable(sae_cls: type[TrainingSAE[Any]], meta_cfg: Any, sae: DictionaryConfig) -> None:
    """Refuse before training when the architecture cannot fold the normalisation into its weights."""
    probe = sae_cls(meta_cfg)
    eye_DD = torch.eye(meta_cfg.d_in, device="meta")
    try:
        probe.fold_activation_whitening(torch.zeros(meta_cfg.d_in, device="meta"), eye_DD, eye_DD)
    except NotImplementedError as err:
        raise ValueError(
            f"architecture {sae.architecture!r} cannot fold --normalize {sae.normalize} into its "
            f"weights ({err}); train it with --normalize none"
        ) from err


def trainer_config(cfg: TrainConfig, min_dead_tokens: int = 0) -> SAETrainerConfig:
    """sae_lens's trainer settings; the dead-latent window holds at least ``min_dead_tokens`` tokens."""
    o = cfg.optim
    window = cfg.dead_window_steps(min_dead_tokens)
    return SAETrainerConfig(
        total_training_samples=o.steps * o.batch_size,
        train_batch_size_samples=o.batch_size,
        lr=o.lr,
        lr_end=o.lr / 10,
        lr_warm_up_steps=o.lr_warm_up_steps,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        device=cfg.device,
        dead_feature_window=window,
        feature_sampling_window=window,
        logger=LoggingConfig(log_to_wandb=False),
    )


# -- checkpoints --------------------------------------------------------------------------------


def checkpoints(out: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    root = Path(out) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir())


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two config records (run-only fields ignored)."""
    return commit.settings_differences(old, new, ignore=RUN_ONLY_FIELDS)


def save_checkpoint(trainer: SAETrainer[Any, Any], cfg: TrainConfig) -> Path:
    """Commit a checkpoint directory in one rename (never a partial checkpoint), then drop old ones."""
    root = Path(cfg.out) / CHECKPOINTS
    final = root / f"step-{trainer.n_training_steps:08d}"
    with commit.staged_directory(final) as tmp:
        trainer.save_checkpoint(checkpoint_name=tmp.name, base_path=root)
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2))
    for old in checkpoints(Path(cfg.out))[: -cfg.keep_checkpoints]:
        shutil.rmtree(old)
    return final


def _resume(trainer: SAETrainer[Any, Any], cfg: TrainConfig) -> Path:
    latest = checkpoints(Path(cfg.out))[-1]
    old = json.loads((latest / CONFIG_FILE).read_text())
    commit.check_same_settings(f"training run {cfg.out} from {latest.name}", old, cfg.to_dict(),
                               ignore=RUN_ONLY_FIELDS)
    trainer.sae.load_weights_from_checkpoint(latest)
    trainer.load_trainer_state(latest)
    logger.info("resumed from %s (step %d)", latest, trainer.n_training_steps)
    return latest


def _prepare_out(cfg: TrainConfig, resume: bool) -> bool:
    """Make ``cfg.out`` ready; True when a checkpoint is there to resume from.

    A directory a run left before its first checkpoint (a log, temporaries) holds nothing to
    continue: with or without ``resume`` the run starts again there.
    """
    out = Path(cfg.out)
    commit.remove_temporaries(out / CHECKPOINTS)
    for old in checkpoints(out)[: -cfg.keep_checkpoints]:  # a kill may strike before the pruning
        shutil.rmtree(old)
    found = bool(checkpoints(out))
    if found and not resume:
        raise FileExistsError(f"output directory {out} is not empty: it holds checkpoints of a run (pass --resume)")
    if not found:
        if not commit.holds_nothing_saved(out, own=[LOG_FILE]):
            raise FileExistsError(f"output directory {out} is not empty and holds no checkpoint")
        if resume and out.exists():
            logger.info("%s holds no checkpoint yet: training starts from step 0", out)
        commit.clear(out)
    return found


# -- logging ----------------------------------------------------------------------------------


@torch.no_grad()
def step_record(trainer: SAETrainer[Any, Any], output: TrainStepOutput) -> dict[str, Any]:
    """One log line: losses and batch metrics in the (normalised) training space."""
    sae_in_BD, sae_out_BD = output.sae_in.double(), output.sae_out.double()
    total = (sae_in_BD - sae_in_BD.mean(0)).pow(2).sum().item()
    fvu = (sae_out_BD - sae_in_BD).pow(2).sum().item() / total if total > 0 else math.inf
    acts = output.feature_acts.to_dense() if output.feature_acts.is_sparse else output.feature_acts
    record: dict[str, Any] = {
        "step": trainer.n_training_steps,
        "tokens": trainer.n_training_samples,
        "loss": output.loss.item(),
        "fvu": fvu,
        "explained_variance": 1 - fvu,
        "l0": (acts != 0).float().sum(-1).mean().item(),
        "dead_fraction": trainer.dead_neurons.float().mean().item(),
        "lr": trainer.optimizer.param_groups[0]["lr"],
    }
    for name, value in output.losses.items():
        record[name] = float(value.item()) if isinstance(value, torch.Tensor) else float(value)
    return record


class _Log:
    """``log.jsonl`` (cut back to the resumed step, committed) and optional wandb."""

    def __init__(self, cfg: TrainConfig, start_step: int) -> None:
        self.path = Path(cfg.out) / LOG_FILE
        kept = [r for r in commit.read_jsonl(self.path) if r.get("step", 0) <= start_step]
        commit.write_jsonl(self.path, kept)
        self.wandb: Any = None
        if cfg.wandb_project:
            import wandb

            self.wandb = wandb
            wandb.init(project=cfg.wandb_project, config=cfg.to_dict())

    def write(self, record: dict[str, Any]) -> None:
        commit.append_jsonl(self.path, record)
        if self.wandb is not None:
            self.wandb.log(record, step=record["step"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


# -- training ---------------------------------------------------------------------------------


def train_sae(
    cfg: TrainConfig, resume: bool = False, source: ActivationSource | None = None
) -> TrainResult:
    """Train the SAE of ``cfg`` and save a plain SAELens dictionary over raw activations in ``cfg.out``.

    ``source`` overrides ``cfg.data`` (e.g. a :class:`sae_flux.sources.TensorSource` or a
    :class:`sae_flux.sources.FluxStream` over an already loaded Flux). With ``resume`` the run
    continues from the newest checkpoint in ``cfg.out``, seeing exactly the batches the
    uninterrupted run would. A non-finite loss stops the run with :class:`FloatingPointError`
    naming the step; the checkpoints already written are kept.

    Started by a launcher as several processes (``torchrun``), or called inside
    :func:`sae_flux.distributed.process_group`, it trains data-parallel and equals the
    single-process run on the same global batch (:mod:`sae_flux.data_parallel`); every rank
    returns the dictionary rank 0 saved.

    Example:
        >>> train_sae(TrainConfig(out="sae", data=DataConfig(cache="cache")))  # doctest: +SKIP
    """
    with distributed.process_group(distributed.default_backend(cfg.device)) as ranks:
        return _train(cfg, resume, source, ranks)


def _train(cfg: TrainConfig, resume: bool, source: ActivationSource | None, ranks: distributed.Ranks) -> TrainResult:
    distributed.check_same({**cfg.to_dict(), "resume": resume}, what="training settings")
    data_parallel.check_data_parallel(cfg.optim.batch_size, ranks.world_size)
    _use_local_device(cfg, ranks)

    def open_everything() -> tuple[_Data, TrainingSAE[Any], Iterator[torch.Tensor], TrainConfig]:
        data = _data_for(cfg, source)
        sae = build_sae(cfg, data.source.d_model, data.hook, data.model_id)
        batches = data.source.batches(cfg.optim.batch_size, seed=cfg.optim.seed,
                                      buffer_tokens=cfg.data.buffer_tokens, epochs=None)  # refuses data < 1 batch
        return data, sae, batches, fit_to_data(cfg, data.source, data.description)

    data, sae, batches, cfg = distributed.on_every_rank(open_everything)
    distributed.check_same({"data": data.description, "d_model": data.source.d_model,
                            "num_tokens": getattr(data.source, "num_tokens", None)}, what="training data")
    resume = distributed.on_main(lambda: _prepare_out(cfg, resume))
    _check_shared_out(Path(cfg.out))
    sae.cfg.metadata.dataset_path = data.description
    min_dead = dead_window_tokens(sae.cfg.d_sae, getattr(sae.cfg, "k", None))
    trainer = SAETrainer(trainer_config(cfg, min_dead), sae, iter(()))
    if resume:
        distributed.on_every_rank(lambda: _resume(trainer, cfg))
    else:
        distributed.on_main(lambda: _init_from_data(trainer, cfg, data.source))
    data_parallel.broadcast_state(trainer)
    for _ in range(trainer.n_training_steps):  # replay the data order up to the checkpoint
        next(batches)
    batches = data_parallel.rank_slices(batches, ranks)
    trainer.data_provider = batches
    logs: list[_Log] = []  # rank 0's log; the other ranks write nothing
    distributed.on_main(lambda: logs.append(_Log(cfg, trainer.n_training_steps)))
    log = logs[0] if logs else None
    try:
        _fit(trainer, cfg, batches, log)
    finally:
        if log is not None:
            log.close()
    return _finish_on_main(trainer, cfg, data)


def _finish_on_main(trainer: SAETrainer[Any, Any], cfg: TrainConfig, data: _Data) -> TrainResult:
    """Rank 0 saves and evaluates the dictionary; the other ranks wait, then load what it saved."""
    if not distributed.active():
        return _finish(trainer, cfg, data)
    finished: list[TrainResult] = []

    def finish() -> tuple[DictionaryMetrics, int]:
        finished.append(_finish(trainer, cfg, data))
        return finished[0].metrics, finished[0].steps

    metrics, steps = distributed.on_main(finish)
    if finished:
        return finished[0]
    return TrainResult(Path(cfg.out), SAE.load_from_disk(cfg.out, device=cfg.device), metrics, steps)


def _use_local_device(cfg: TrainConfig, ranks: distributed.Ranks) -> None:
    """Under several ranks, ``--device cuda`` means this rank's GPU (``cuda:LOCAL_RANK``)."""
    if ranks.world_size == 1 or not cfg.device.startswith("cuda"):
        return
    if cfg.device != "cuda":
        raise UserError(f"--device {cfg.device} names one GPU for all {ranks.world_size} ranks: give "
                        f"--device cuda (each rank then uses cuda:LOCAL_RANK)")
    torch.cuda.set_device(ranks.local_rank)


def _check_shared_out(out: Path) -> None:
    """Refuse, on every rank, an ``out`` that is not one directory all ranks see (rank 0 writes
    the checkpoints every rank resumes from, and the dictionary every rank returns)."""
    if not distributed.active():
        return
    token = distributed.from_main(secrets.token_hex(8))
    probe = out / f"{commit.TMP_DIR_PREFIX}ranks-{token}"
    if distributed.ranks().is_main:
        out.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
    distributed.barrier()
    seen = probe.is_file() and probe.read_text() == token
    distributed.all_ok(seen, f"the output directory {out} is not the same directory on every rank: "
                             f"put --out on a filesystem that every rank sees")
    if distributed.ranks().is_main:
        probe.unlink()


def _data_for(cfg: TrainConfig, source: ActivationSource | None) -> _Data:
    if source is None:
        return open_data(cfg.data)
    check_width(source, cfg.data.d_in, type(source).__name__)
    hook = cfg.data.hook or "unknown"
    return _Data(source, hook, cfg.data.model or "unknown", type(source).__name__)


def _init_from_data(trainer: SAETrainer[Any, Any], cfg: TrainConfig, source: ActivationSource) -> None:
    """Normalisation from the first tokens; decoder bias at their (normalised) mean, as in the paper."""
    first = source.batches(cfg.optim.batch_size, seed=cfg.optim.seed,
                           buffer_tokens=cfg.data.buffer_tokens, epochs=None)
    acts_ND = _take_tokens(first, cfg.sae.normalize_tokens)
    whitening = normalize.estimate(cfg.sae.normalize, acts_ND)
    trainer.activation_scaler.whitening = whitening
    with torch.no_grad():
        mean_D = normalize.apply(whitening, acts_ND).mean(0)
        trainer.sae.b_dec.data.copy_(mean_D.to(trainer.sae.b_dec.dtype))


def _fit(trainer: SAETrainer[Any, Any], cfg: TrainConfig, batches: Iterator[torch.Tensor], log: _Log | None) -> None:
    """Step to ``cfg.optim.steps``; ``log`` is ``None`` on ranks other than 0 (which write nothing)."""
    with data_parallel.averaged_gradients(trainer.sae), data_parallel.global_batch_topk(trainer.sae):
        _steps(trainer, cfg, batches, log)


def _steps(trainer: SAETrainer[Any, Any], cfg: TrainConfig, batches: Iterator[torch.Tensor], log: _Log | None) -> None:
    total = cfg.optim.steps
    last_checkpoint: Path | None = None
    bar = tqdm(total=total, initial=trainer.n_training_steps, desc="train SAE", unit="step", disable=log is None)
    while trainer.n_training_steps < total:
        trainer.maybe_reset_sparsity()
        output = data_parallel.step(trainer, next(batches), cfg.optim.batch_size)
        if not torch.isfinite(output.loss):
            bar.close()
            found = checkpoints(Path(cfg.out))
            kept = last_checkpoint or (found[-1] if found else None)
            where = f"the last good checkpoint is {kept}" if kept else "no checkpoint had been written yet"
            raise FloatingPointError(
                f"loss became {output.loss.item()} at step {trainer.n_training_steps}; "
                f"training stopped and {where} (resume from it with a lower lr, or check the data)"
            )
        trainer.n_training_steps += 1
        if trainer.n_training_steps % cfg.log_every == 0 or trainer.n_training_steps == total:
            whole = data_parallel.whole_batch(output)
            if log is not None:
                record = step_record(trainer, whole)
                log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.4g}", fvu=f"{record['fvu']:.3f}")
        if cfg.checkpoint_every and trainer.n_training_steps % cfg.checkpoint_every == 0:
            last_checkpoint = distributed.on_main(lambda: save_checkpoint(trainer, cfg))
        bar.update(1)
    bar.close()


def _save_dictionary(sae: TrainingSAE[Any], out: Path) -> None:
    """Commit the inference SAE's files into ``out``, ``cfg.json`` last (it names the others)."""
    staged = out / f"{commit.TMP_DIR_PREFIX}dictionary"
    shutil.rmtree(staged, ignore_errors=True)
    weights, cfg_file = sae.save_inference_model(staged)
    for file in (Path(weights), Path(cfg_file)):
        commit.commit(file, out / file.name)
    shutil.rmtree(staged)


def _finish(trainer: SAETrainer[Any, Any], cfg: TrainConfig, data: _Data) -> TrainResult:
    found = checkpoints(Path(cfg.out))
    if not found or found[-1].name != f"step-{trainer.n_training_steps:08d}":
        save_checkpoint(trainer, cfg)  # the final trainer state, before folding
    trainer.set_final_sae_metadata()
    sae = trainer.sae
    whitening = trainer.activation_scaler.whitening
    if whitening is not None:
        sae.fold_activation_whitening(whitening.mean, whitening.matrix, whitening.inverse_matrix)
        trainer.activation_scaler.whitening = None
    out = Path(cfg.out)
    eval_tokens = max(cfg.eval_tokens, dead_window_tokens(sae.cfg.d_sae, getattr(sae.cfg, "k", None)))
    extra: dict[str, Any] = {}
    if isinstance(sae, BatchTopKTrainingSAE):
        window = min(max(eval_tokens, CALIBRATION_TOKENS), max(1, CALIBRATION_VALUES // sae.cfg.d_sae))
        extra["batchtopk_threshold"] = calibrate_batchtopk(sae, _take_tokens(_eval_batches(cfg, data), window))
    _save_dictionary(sae, out)
    commit.write_json(out / CONFIG_FILE, cfg.to_dict(), indent=2)
    saved = SAE.load_from_disk(out, device=cfg.device)
    metrics = evaluate(saved, _eval_batches(cfg, data), max_tokens=eval_tokens)
    metrics.save(out, extra={"hook": data.hook, "model": data.model_id, "data": data.description,
                             "window": f"first {metrics.tokens} tokens of the training stream (in-sample)",
                             "steps": trainer.n_training_steps, **extra})
    logger.info("saved %s: FVU %.4f, L0 %.1f, dead %.3f over %d tokens",
                out, metrics.fvu, metrics.l0, metrics.dead_fraction, metrics.tokens)
    return TrainResult(out, saved, metrics, trainer.n_training_steps)


def _eval_batches(cfg: TrainConfig, data: _Data) -> Iterator[torch.Tensor]:
    return data.source.batches(cfg.optim.batch_size, seed=cfg.optim.seed,
                               buffer_tokens=cfg.data.buffer_tokens, epochs=1)


#: Tokens a BatchTopK threshold is calibrated on (fewer when the data or CALIBRATION_VALUES allow fewer).
CALIBRATION_TOKENS = 65_536
#: Latent values materialised at once when calibrating a BatchTopK threshold (64 MB of float32).
CALIBRATION_VALUES = 2**24


@torch.no_grad()
def calibrate_batchtopk(sae: BatchTopKTrainingSAE, acts_ND: torch.Tensor) -> dict[str, float]:
    """Set the threshold a BatchTopK SAE is saved with (as a JumpReLU) to its batch top-k cut over ``acts``.

    sae_lens saves BatchTopK as JumpReLU with the threshold ``topk_threshold``, a moving average
    (rate 0.01, started at 0) of each batch's smallest kept activation. In a short run it lags
    the growing pre-activations, so the saved SAE fires on far more than k latents per token
    (L0 27 for k = 8 in the demo) and its reconstructions are not the ones it was trained to
    make. The cut that BatchTopK itself applies to ``acts`` (the midpoint between the
    (k x N)-th and the next largest pre-activation, on weights with the normalisation folded in)
    is used instead; the moving average is recorded beside it.
    """
    _, hidden_pre_NF = sae.encode_with_hidden_pre(acts_ND.to(sae.W_enc.device, sae.W_enc.dtype))
    flat = hidden_pre_NF.relu().flatten()
    keep = min(max(1, int(sae.cfg.k * len(acts_ND))), len(flat) - 1)
    top = flat.topk(keep + 1).values
    cut = 0.5 * (top[keep - 1] + top[keep])
    ema = float(sae.topk_threshold)
    sae.topk_threshold = cut.to(sae.topk_threshold.dtype).clone()
    logger.info("BatchTopK threshold %.4g (batch top-k cut over %d tokens); the moving average was %.4g",
                float(cut), len(acts_ND), ema)
    return {"calibrated": float(cut), "moving_average": ema, "tokens": len(acts_ND)}
