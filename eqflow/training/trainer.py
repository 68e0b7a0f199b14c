"""Training loop for any density model: reverse KL, maximum likelihood, flow matching and the data-free
mass-covering objectives on a replay buffer (with temperature annealing); checkpoints that survive
crashes, kills and signals.

The :class:`Trainer` knows no config file. It takes a *model* (anything with ``sample(n) -> (x,
log_q)`` and ``log_prob(x)``, see :mod:`eqflow.models`), a target energy, an optimizer (default Adam)
and :class:`~eqflow.config.TrainConfig` settings (a plain dataclass). Config-driven building
(:func:`~eqflow.training.run_training`) is a layer above it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import random
import signal
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..checkpoint import previous_path, read_checkpoint, remove_temporary_files, save_checkpoint_atomic
from ..config import AnnealConfig, BufferConfig, FMConfig, TrainConfig
from .. import distributed as dd
from ..distributions import ReferenceData
from ..errors import CheckpointError, RunFolderError
from ..evaluation.metrics import ess
from ..evaluation.modes import training_mode_populations
from ..flows import ContinuousFlow
from ..geometry import remove_mean
from ..solvers import SolverSettings
from ..targets.langevin import mala
from ..targets.tempered import TemperedEnergy
from .annealing import TemperatureLadder
from .buffer import ReplayBuffer
from .ema import ParameterEMA
from .flow_matching import align_pairs, draw_base, flow_matching_loss
from .losses import maximum_likelihood_loss, path_gradient_kl_loss, reverse_kl_loss
from .solve_gap import training_solve_gap
from .weighted import weighted_flow_matching_loss, weighted_maximum_likelihood_loss

__all__ = ["Trainer", "TrainingInterrupted", "load_model_weights", "save_checkpoint_atomic", "make_scheduler", "seed_everything",
           "CHECKPOINT_FORMAT", "CHECKPOINT_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "eqflow-checkpoint-2"


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM after saving a checkpoint at :attr:`step`.

    A ``KeyboardInterrupt``, so notebooks and callers that stop on Ctrl-C keep doing so.
    """

    def __init__(self, step: int, signum: int):
        super().__init__(f"checkpoint saved at step {step}, resume with --resume")
        self.step, self.signum = step, signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_step(seed: int, rank: int, step: int) -> None:
    """Seed torch, numpy and random for one training step of one rank (:func:`eqflow.distributed.step_seed`).

    The random stream of step ``k`` is a function of ``(seed, rank, k)`` alone, so the state "at the
    start of a step" needs no saving: a resumed run (after a kill, Ctrl-C or SIGTERM mid-step) draws
    exactly what the uninterrupted run drew, and the checkpoint is the same whatever the number of
    ranks that wrote it.
    """
    s = dd.step_seed(seed, rank, step)
    torch.manual_seed(s)
    np.random.seed(s % 2 ** 32)
    random.seed(s)


def budget_share(seconds: float, settings: TrainConfig) -> float | None:
    """The elapsed share of the wall-clock budget in [0, 1] (``train.schedule_clock: time``), or None
    when the schedules follow the step count alone (step clock or no budget)."""
    if settings.schedule_clock != "time" or not settings.budget_minutes:
        return None
    return min(1.0, seconds / (60.0 * settings.budget_minutes))


def make_scheduler(optimizer, settings: TrainConfig, clock=None):
    """Linear warm-up, then constant, cosine (to ``lr_final``) or exponential (to ``lr_final``).

    ``clock`` (``train.schedule_clock: time``) returns the training seconds so far: the schedule's progress
    is then the larger of ``step / steps`` and ``seconds / budget``, so a run that a busy machine
    slows down still reaches ``lr_final`` when its wall-clock budget ends (with a step clock it
    would stop half-way down the cosine). Under torchrun the seconds are the ranks' agreed value,
    so every rank uses the same learning rate.
    """
    t = settings
    floor = t.lr_final / t.lr

    def factor(step: int) -> float:
        if t.warmup_steps and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
        share = budget_share(clock(), t) if clock is not None else None
        if share is not None:
            progress = max(progress, share)
        if t.lr_schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if t.lr_schedule == "exponential":
            return floor ** progress
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Trainer:
    """Fits a density model to a target by any weighted sum of (``settings.*_weight``)

    - ``kl_weight``: reverse KL, energy only;
    - ``ml_weight``: maximum likelihood on reference samples ``train_data``;
    - ``fm_data_weight``: flow matching on reference samples (no ODE solve);
    - ``fm_weight``: importance-weighted flow matching on the replay buffer (data-free);
    - ``iwml_weight``: importance-weighted maximum likelihood on the replay buffer (through the solver).

    Parameters
    ----------
    model : ``torch.nn.Module`` with ``sample(n) -> (x [n, N, dim], log_q [n])`` (reparameterized) and
        ``log_prob(x) -> [n]``; eqflow's flows, the IC baseline, or a hand-built model
    target : the :class:`~eqflow.targets.Energy` (reduced energies)
    settings : :class:`~eqflow.config.TrainConfig` (steps, batch size, loss weights, lr schedule, ...)
    optimizer : default ``Adam(lr=settings.lr, weight_decay=settings.weight_decay)`` over the model's
        trainable parameters
    out_dir : run folder: ``checkpoint.pt`` (and its fallback ``checkpoint.pt.prev``) and
        ``metrics.jsonl`` go here
    train_data : reference samples for the maximum-likelihood term (``settings.ml_weight > 0``)
    val_data : held-out reference samples; with ``val_every > 0`` their NLL is logged
    energy_cut : training energies above this (kT) grow only logarithmically
    force_clip : cap on each atom's energy gradient in reverse KL (kT per unit length), instead of the
        logarithmic damping's gradient; None: off (:func:`~eqflow.targets.regularize.clipped_force_energy`)
    val_every, val_samples, val_batch_size : validation NLL schedule and cost
    val_log_prob : ``x -> log q(x)`` used for validation (default ``model.log_prob``), e.g. with an
        exact divergence
    metadata : plain data stored in every checkpoint (the run layer stores the config there)
    overwrite : allow a fresh run into a folder that already holds a checkpoint
    progress : show a tqdm bar
    fm_settings : :class:`~eqflow.config.FMConfig` (alignment, permutation, ``sigma_min``, batch size)
        of the flow-matching terms
    buffer_settings : :class:`~eqflow.config.BufferConfig`; a :class:`ReplayBuffer` is kept when
        ``fm_weight`` or ``iwml_weight`` is > 0. With ``mcmc_steps > 0`` each refreshed sample first
        makes that many MALA moves on the current rung's energy (:func:`eqflow.targets.mala`), and
        the buffer holds the moved states (trained on unweighted: ``tempering: 0``)
    anneal_settings : :class:`~eqflow.config.AnnealConfig`; with ``temperatures`` the energies of every
        term are those of the current rung, ``u_T = u · T_target / T`` (:class:`TemperedEnergy`); the
        last rung must be the target's temperature (``target.temperature``, K, for molecules; 1 or
        DW4's ``tau`` for particle systems). Rungs given by ``fractions`` are fractions of ``settings.steps``
    sample_fn : ``n -> (x, log_q)`` used to refresh the buffer (default ``model.sample``), e.g.
        ``lambda n: flow.sample(n, divergence="exact")`` for accurate importance weights

    Notes
    -----
    Samples whose energy, force or log-density is not finite are dropped inside the loss with an
    exactly zero gradient and counted; steps whose loss or gradient is still not finite are skipped
    (no update) and counted, with one warning once more than ``settings.skip_warning_fraction`` of
    the steps so far were skipped. Gradients are clipped to ``settings.grad_clip``.

    Checkpoints (model, optimizer, scheduler, counters, metadata) are written atomically every
    ``settings.checkpoint_every`` steps, at the end, and when SIGINT or SIGTERM arrive; then
    :class:`TrainingInterrupted` is raised. Each step seeds the random generators from ``(seed, rank,
    step)``, so the random state at the start of a step is never lost: a signal in the middle of a
    step abandons it, the checkpoint holds the state from its start, and a resumed run equals an
    uninterrupted one step for step (this also reseeds the global generators, at every step).

    With ``settings.ema_decay > 0`` a moving average of the weights (:class:`ParameterEMA`) is updated
    after every optimizer step; the checkpoint's ``"model"`` is the average (what loaders and
    evaluation use), ``"train_model"`` the raw weights that training resumes from, and
    :meth:`apply_ema` puts the average into the model after training.

    Under ``torchrun`` (:mod:`eqflow.distributed`) each rank draws its share of the global batch
    ``settings.batch_size`` with its own seed stream, gradients are averaged over ranks before
    clipping, metrics are reduced over ranks, rank 0 alone writes files, signals stop all ranks at
    the same step boundary, and the checkpoint is the same whatever the number of ranks.

    **Replay buffer.** Filled before the first step and refreshed at every step that is a multiple of
    ``buffer_settings.refresh_every``, with ``refresh_samples`` samples of the current model drawn
    under ``torch.no_grad()`` (no graph kept) and scored by the target at the current temperature. At
    each refresh the buffer's ESS (raw and after clipping/tempering), its largest weight, the energies
    of the new samples (reduced at the *target* temperature) and the mode populations of the new
    samples, raw and reweighted (:func:`~eqflow.evaluation.modes.training_mode_populations`), go to
    ``metrics.jsonl``. Every row also carries ``energy_evals`` (configurations scored by the target
    so far: reverse-KL batches and refreshes, summed over ranks) and ``time``. On a rung change the
    buffer is moved to the new temperature with ``reweight_temperature`` (energies rescaled, never
    recomputed) and the row logs ``rung_change``. The buffer and the temperature are part of the
    checkpoint; a step cut short by a signal leaves them as they were at its start, so resume is exact.

    Under torchrun the buffer is **sharded per rank**: each rank refreshes its share of
    ``refresh_samples`` with its own seed stream into its own buffer and draws its share of each
    batch from it; buffer statistics are averaged over ranks. The checkpoint holds rank 0's buffer
    only (it stays rank-independent in format) and on resume every rank starts from that buffer, so
    with more than one rank a resumed run is not bitwise the uninterrupted one (with one rank it is).
    """

    def __init__(self, model, target, settings: TrainConfig | None = None, optimizer=None, out_dir=None,
                 train_data: ReferenceData | None = None, val_data: ReferenceData | None = None,
                 energy_cut: float = 1000.0, val_every: int = 0, val_samples: int = 200,
                 val_batch_size: int = 1000, val_log_prob=None, metadata: dict | None = None,
                 overwrite: bool = False, progress: bool = True, fm_settings: FMConfig | None = None,
                 buffer_settings: BufferConfig | None = None, anneal_settings: AnnealConfig | None = None,
                 sample_fn=None, force_clip: float | None = None):
        self.model, self.target = model, target
        self.settings = t = settings if settings is not None else TrainConfig()
        self.out_dir = Path(out_dir if out_dir is not None else "runs/untitled")
        if dd.is_main():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            remove_temporary_files(self.out_dir)  # from writes killed in an earlier run
        self.train_data = train_data
        self.energy_cut = float(energy_cut)
        self.force_clip = None if force_clip is None else float(force_clip)
        self.val_every, self.val_batch_size = int(val_every), int(val_batch_size)
        self.val_x = (None if val_data is None or val_every <= 0 else val_data.positions[:val_samples])
        self.val_log_prob = val_log_prob or model.log_prob
        self.metadata = dict(metadata or {})
        self.overwrite = overwrite
        self.progress = progress
        if t.ml_weight > 0 and (train_data is None or len(train_data) == 0):
            raise ValueError("train.ml_weight > 0 but no reference samples were given for maximum likelihood")
        if t.fm_data_weight > 0 and (train_data is None or len(train_data) == 0):
            raise ValueError("train.fm_data_weight > 0 but no reference samples were given for flow matching")
        if (t.fm_weight > 0 or t.fm_data_weight > 0) and not isinstance(model, ContinuousFlow):
            raise ValueError(f"flow matching needs a ContinuousFlow, got {type(model).__name__}")
        self.fm_settings = fm_settings if fm_settings is not None else FMConfig()
        self.buffer_settings = bs = buffer_settings if buffer_settings is not None else BufferConfig()
        # Every energy of training goes through this wrapper: the current rung's temperature, counted.
        self.energy = TemperedEnergy(target)
        self.ladder = _make_ladder(anneal_settings, t.steps)
        if self.ladder is not None:
            if not math.isclose(self.ladder.target, self.energy.t_target, rel_tol=1e-9):
                raise ValueError(f"the annealing ladder ends at {self.ladder.target}, the target's temperature "
                                 f"is {self.energy.t_target}: the last rung must be the target's")
            self.energy.temperature = self.ladder.temperature_at(0)
        self.buffer = None
        if t.fm_weight > 0 or t.iwml_weight > 0:
            self.buffer = ReplayBuffer(bs.capacity, temperature=self.energy.temperature,
                                       clip_quantile=bs.clip_quantile, clip_log_ratio=bs.clip_log_ratio,
                                       tempering=bs.tempering)
        self.sample_fn = sample_fn if sample_fn is not None else model.sample
        self.atom_types = getattr(target, "atom_types", None)
        self.n_energy_evals = 0
        # MALA step of the buffer's refinement (buffer.mcmc_steps), adapted and carried across refreshes
        self.mcmc_step_size = float(bs.mcmc_step_size)
        self._step_start = None  # (temperature, buffer state, MALA step) at the start of a step that changes them
        # The average of the weights (train.ema_decay): what checkpoints store as "model" and what
        # run_training evaluates (apply_ema); the raw weights go on training.
        self.ema = ParameterEMA(model, t.ema_decay) if t.ema_decay > 0 else None
        self.optimizer = optimizer or torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                                       lr=t.lr, weight_decay=t.weight_decay)
        self._clock_seconds = 0.0  # training seconds agreed by all ranks at the last step boundary
        self.scheduler = make_scheduler(self.optimizer, t,
                                        clock=(lambda: self._clock_seconds) if t.schedule_clock == "time" else None)
        self.step = 0
        self.n_skipped = 0
        self.n_dropped = 0
        self.elapsed = 0.0  # training seconds, summed over resumed runs (the budget counts these)
        self._resumed = False
        self._skip_warned = False
        self._solve_warned = False
        self.last_solve_gap = None  # the latest train.solve_check_every result (nats), for the summary
        self._defer_signals = False
        self._pending_signal = None
        self.dist = dd.dist_info()
        if self.dist.enabled:  # every rank starts from rank 0's parameters, whatever seeded them
            for p in model.parameters():
                torch.distributed.broadcast(p.data, src=0)

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "metadata": self.metadata,
            # "model" is the model to use (the EMA when on); "train_model" the raw weights to resume from
            "model": self.model.state_dict() if self.ema is None else self.ema.model_state_dict(self.model),
            "train_model": None if self.ema is None else self.model.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "seed": self.settings.seed,
            "n_skipped": self.n_skipped,
            "n_dropped": self.n_dropped,
            "elapsed": self.elapsed,
            "buffer": None if self.buffer is None else self.buffer.state_dict(),
            "ladder": None if self.ladder is None else self.ladder.state_dict(),
            "temperature": self.energy.temperature,
            "n_energy_evals": self.n_energy_evals,
            "mcmc_step_size": self.mcmc_step_size,
            "train_solve": (dataclasses.asdict(self.model.solver_settings)
                            if getattr(self.model, "solver_settings", None) is not None else None),
        }

    def save(self) -> Path:
        """Write the checkpoint (rank 0 only; other ranks hold the same state)."""
        if dd.is_main():
            save_checkpoint_atomic(self.state_dict(), self.checkpoint_path)
        return self.checkpoint_path

    def load(self, path=None) -> None:
        """Restore everything saved by :meth:`save` (resume is exact on CPU, for any number of ranks).

        Without ``path``, the run folder's checkpoint; if that one is damaged, its fallback
        (``checkpoint.pt.prev``, one save older) with a warning. Under torchrun rank 0 reads the file
        and sends its contents to the other ranks.
        """
        state = None
        if dd.is_main():
            if path is None and not self.checkpoint_path.exists() and \
                    not previous_path(self.checkpoint_path).exists():
                raise RunFolderError(f"nothing to resume: no checkpoint in {self.out_dir}")
            state = _read_run_checkpoint(Path(path or self.checkpoint_path), fallback=path is None)
        if self.dist.enabled:
            box = [state]
            torch.distributed.broadcast_object_list(box, src=0)
            state = box[0]
        raw = state.get("train_model")
        self.model.load_state_dict(raw if raw is not None else state["model"])
        if self.ema is not None:
            # A checkpoint without EMA: the average starts at its weights.
            self.ema.load(state["model"], state.get("ema"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.n_skipped = state["step"], state["n_skipped"]
        self.n_dropped, self.elapsed = state["n_dropped"], state["elapsed"]
        if self.buffer is not None and state.get("buffer") is not None:
            if int(state["buffer"]["capacity"]) != self.buffer.capacity:
                raise RunFolderError(f"--resume: the checkpoint's replay buffer holds {int(state['buffer']['capacity'])} "
                                     f"entries, buffer.capacity is {self.buffer.capacity}; keep it on resume")
            self.buffer.load_state_dict(state["buffer"])
        if self.ladder is not None and state.get("ladder") is not None:
            # The ladder the run started with wins over an edited config: the rungs are part of the run.
            self.ladder.load_state_dict(state["ladder"])
        self.energy.temperature = float(state.get("temperature", self.energy.temperature))
        self.n_energy_evals = int(state.get("n_energy_evals", 0))
        self.mcmc_step_size = float(state.get("mcmc_step_size", self.mcmc_step_size))
        if state.get("train_solve") is not None and getattr(self.model, "solver_settings", None) is not None:
            # A solve refined during the run (train.solve_check_refine) stays refined on resume.
            self.set_training_solve(SolverSettings(**state["train_solve"]))
        self._resumed = True
        if dd.is_main():
            self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        # Rows logged after the checkpoint belong to a run that will be redone; a line cut short by
        # a kill during its write is dropped.
        if not self.metrics_path.exists():
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("step", 0) <= self.step:
                keep.append(row)
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    # -- one step --------------------------------------------------------------------------------
    def _local_batch(self, global_batch: int) -> int:
        return dd.shard_sizes(global_batch, self.dist.world_size)[self.dist.rank]

    def compute_loss(self):
        """The configured loss on this rank's share of one batch: ``(loss, record)``.

        ``record`` holds this rank's floats; ``log_w`` (a tensor, for the batch ESS) is gathered over
        ranks by :meth:`train_step`.
        """
        t = self.settings
        loss = 0.0
        record = {}
        if t.kl_weight > 0 and t.kl_gradient == "path":
            kl, stats = path_gradient_kl_loss(self.model, self.energy, self._local_batch(t.batch_size),
                                              self.energy_cut, force_clip=self.force_clip)
        elif t.kl_weight > 0:
            alpha = self.kl_alpha()
            if t.kl_alpha != 1.0:
                record["kl_alpha"] = alpha
            kl, stats = reverse_kl_loss(self.model, self.energy, self._local_batch(t.batch_size), self.energy_cut,
                                        kinetic_weight=t.kinetic_weight, jacobian_weight=t.jacobian_weight,
                                        force_clip=self.force_clip, alpha=alpha,
                                        gather=dd.all_gather_cat if self.dist.world_size > 1 else None)
        if t.kl_weight > 0:
            loss = loss + t.kl_weight * kl
            record.update({k: stats[k] for k in ("kinetic", "jacobian") if k in stats})
            record.update(kl=stats["kl"], energy=stats["energy"], dropped=stats["n_dropped"], log_w=stats["log_w"])
        if t.ml_weight > 0:
            idx = torch.randint(len(self.train_data), (self._local_batch(t.ml_batch_size),))
            x = self.train_data.positions[idx].to(device=self._device(), dtype=self._dtype())
            ml, stats = maximum_likelihood_loss(self.model, x)
            loss = loss + t.ml_weight * ml
            record.update(nll=stats["nll"], dropped=record.get("dropped", 0) + stats["n_dropped"])
        if t.fm_weight > 0:
            x1, log_w = self._buffer_draw(self._local_batch(self.fm_settings.batch_size))
            fm, stats = self._flow_matching(x1, log_w)
            loss = loss + t.fm_weight * fm
            record["fm"] = stats["fm"]
        if t.iwml_weight > 0:
            x, log_w = self._buffer_draw(self._local_batch(t.ml_batch_size))
            iwml, stats = weighted_maximum_likelihood_loss(self.model, x, log_w)
            loss = loss + t.iwml_weight * iwml
            record.update(iwml=stats["nll"], dropped=record.get("dropped", 0) + stats["n_dropped"])
        if t.fm_data_weight > 0:
            idx = torch.randint(len(self.train_data), (self._local_batch(self.fm_settings.batch_size),))
            x1 = self.train_data.positions[idx].to(device=self._device(), dtype=self._dtype())
            fm, stats = self._flow_matching(x1, None)
            loss = loss + t.fm_data_weight * fm
            record["fm_data"] = stats["fm"]
        return loss, record

    def kl_alpha(self) -> float:
        """The Rényi order of this step: ``train.kl_alpha`` once the schedule's progress (steps, or the
        budget's share with a time clock) has reached ``train.kl_alpha_from``; reverse KL (1) before."""
        t = self.settings
        if t.kl_alpha == 1.0 or self._schedule_step() >= t.kl_alpha_from * t.steps:
            return t.kl_alpha
        return 1.0

    def _buffer_draw(self, n: int):
        """``(x [n, N, dim], log_w [n])`` from the buffer: by weight (then ``log_w = 0``: the draws are
        already weighted) or uniformly with their controlled log weights (``buffer.resample``)."""
        if self.buffer_settings.resample:
            x, _ = self.buffer.sample(n, resample=True)
            return x, torch.zeros(n, dtype=x.dtype, device=x.device)
        x, idx = self.buffer.sample(n, resample=False)
        return x, self.buffer.log_weights()[idx]

    def _flow_matching(self, x1: torch.Tensor, log_w: torch.Tensor | None):
        """Flow-matching loss of data ``x1`` against fresh base samples (per mixture component),
        aligned as ``fm_settings`` says; importance-weighted when ``log_w`` is given."""
        fm = self.fm_settings
        x0, components = draw_base(self.model, x1.shape[0])
        x0 = x0.to(x1.dtype)
        if fm.align:
            x1 = align_pairs(x0, x1, permute=fm.permute, atom_types=self.atom_types if fm.permute else None)
        else:
            x1 = remove_mean(x1)
        kwargs = dict(components=components, sigma_min=fm.sigma_min)
        if log_w is None:
            return flow_matching_loss(self.model, x0, x1, **kwargs)
        return weighted_flow_matching_loss(self.model, x0, x1, log_w, **kwargs)

    # -- buffer and temperature --------------------------------------------------------------------
    def _schedule_step(self) -> int:
        """The step the annealing ladder reads: the step count, or with ``train.schedule_clock: time``
        the larger of it and the budget's elapsed share of ``train.steps`` (so the rungs, given as
        fractions of ``train.steps``, are reached within the wall-clock budget on a slow machine)."""
        share = budget_share(self._clock_seconds, self.settings)
        return self.step if share is None else max(self.step, int(share * self.settings.steps))

    def _begin_step(self) -> dict:
        """Move to this step's rung and refresh the buffer when due. Returns their log entries.

        What it changes is remembered first (``_step_start``) so that a step cut short by a signal
        can be undone (:meth:`_undo_step`) and the checkpoint holds the state from the step's start.
        """
        record = {}
        temp = (self.ladder.temperature_at(self._schedule_step()) if self.ladder is not None
                else self.energy.temperature)
        rung_change = temp != self.energy.temperature
        refresh = self.buffer is not None and (len(self.buffer) == 0
                                               or self.step % self.buffer_settings.refresh_every == 0)
        if rung_change or refresh:
            self._step_start = (self.energy.temperature,
                                None if self.buffer is None else self.buffer.state_dict(), self.mcmc_step_size)
        if rung_change:
            record.update(rung_change=1, previous_temperature=self.energy.temperature)
            self.energy.temperature = temp
            if self.buffer is not None:  # stored energies rescaled, never recomputed
                self.buffer.reweight_temperature(temp)
        if self.ladder is not None:
            record["temperature"] = self.energy.temperature
        if refresh:
            record.update(self.refresh_buffer())
        return record

    def _undo_step(self) -> None:
        if self._step_start is None:
            return
        temp, buf, self.mcmc_step_size = self._step_start
        self.energy.temperature = temp
        if buf is not None:
            self.buffer.load_state_dict(buf)
        self._step_start = None

    def refresh_buffer(self) -> dict:
        """Add ``refresh_samples`` (this rank's share) samples of the current model to the buffer.

        Sampled with ``sample_fn`` under ``torch.no_grad()`` in chunks of the training batch and scored
        at the current temperature. Returns the log entries: buffer ESS (``buffer_ess``,
        ``buffer_ess_raw``), largest self-normalized weight, size, dropped rows, energies of the new
        samples (reduced at the target's temperature) and their mode populations.
        """
        n = self._local_batch(self.buffer_settings.refresh_samples)
        chunk = max(1, self._local_batch(self.settings.batch_size))
        xs, lqs, us = [], [], []
        with torch.no_grad():
            for i in range(0, n, chunk):
                x, log_q = self.sample_fn(min(chunk, n - i))
                xs.append(x.detach())
                lqs.append(log_q.detach())
                us.append(self.energy.energy(x.detach()).detach())
        x, log_q, u = torch.cat(xs), torch.cat(lqs), torch.cat(us)
        mcmc = {}
        if self.buffer_settings.mcmc_steps > 0:
            x, log_q, u, mcmc = self._refine(x, u)
        n_dropped = self.buffer.add(x, log_q, u)
        st = self.buffer.stats()
        ok = torch.isfinite(u) & torch.isfinite(log_q)
        u_target = u[ok] / self.energy.factor
        record = dict(buffer_ess=st["ess"], buffer_ess_raw=st["ess_raw"], buffer_max_weight=st["max_weight"],
                      buffer_max_weight_raw=st["max_weight_raw"], buffer_size=float(st["size"]),
                      buffer_dropped=n_dropped,
                      refresh_energy_mean=float(u_target.mean()) if ok.any() else float("nan"),
                      refresh_energy_min=float(u_target.min()) if ok.any() else float("nan"))
        record.update(mcmc)
        log_w = torch.where(ok, -u - log_q, torch.full_like(u, -float("inf")))
        # log_w always given (all -inf gives zero weights): every rank logs the same keys.
        modes = training_mode_populations(self.target, x.cpu(), log_w.cpu(),
                                          reflection_symmetric=getattr(self.model, "reflection_symmetric", True))
        record.update(modes)
        return record

    def _refine(self, x: torch.Tensor, u_model: torch.Tensor):
        """``buffer.mcmc_steps`` MALA moves (:func:`eqflow.targets.mala`) from the model's samples
        ``x`` at the current temperature, then ``log q`` of the moved states (for the buffer's
        diagnostics; the loss trains on them unweighted, ``buffer.tempering: 0``). The step size
        carries over from one refresh to the next (checkpointed). Returns ``(x, log_q, u, record)``."""
        bs = self.buffer_settings
        ok = torch.isfinite(u_model)
        out = mala(self.energy, x, bs.mcmc_steps, self.mcmc_step_size, max_drift=bs.mcmc_max_drift)
        moved_ok = torch.isfinite(out.u)
        if moved_ok.any():
            self.mcmc_step_size = float(out.step_size[moved_ok].median())
        if self.dist.enabled:  # one step size for all ranks (and the checkpoint)
            self.mcmc_step_size = float(dd.all_reduce_mean({"s": self.mcmc_step_size})["s"])
        chunk = max(1, self._local_batch(self.settings.batch_size))
        # the refresh's divergence (buffer.divergence) where the model takes one (eqflow's flows)
        kwargs = ({"divergence": bs.divergence}
                  if "divergence" in inspect.signature(self.model.log_prob).parameters else {})
        with torch.no_grad():
            log_q = torch.cat([self.model.log_prob(out.x[i:i + chunk], **kwargs).detach()
                               for i in range(0, out.x.shape[0], chunk)])
        factor = self.energy.factor
        record = dict(mcmc_acceptance=float(out.acceptance.mean()), mcmc_step_size=self.mcmc_step_size,
                      mcmc_energy_before=float(u_model[ok].median() / factor) if ok.any() else float("nan"),
                      mcmc_energy_after=(float(out.u[moved_ok].median() / factor)
                                         if moved_ok.any() else float("nan")))
        return out.x, log_q, out.u, record

    def _dtype(self):
        return next(self.model.parameters()).dtype

    def _device(self):
        return next(self.model.parameters()).device

    def _reduce_record(self, record: dict) -> dict:
        """Metrics over all ranks: means of the floats, sums of counts, the ESS of the whole batch."""
        log_w = record.pop("log_w", None)
        if log_w is not None:
            log_w = dd.all_gather_cat(log_w.detach())
            record["ess_batch"] = ess(log_w.cpu().numpy()) if torch.isfinite(log_w).any() else 0.0
        if not self.dist.enabled:
            return record
        counts = dd.all_reduce_sum({k: record[k] for k in ("dropped", "buffer_dropped", "energy_evals_step")
                                    if k in record})
        floats = dd.all_reduce_mean({k: v for k, v in record.items()
                                     if k not in counts and k != "ess_batch" and isinstance(v, float)})
        record.update(floats)
        record.update({k: int(v) for k, v in counts.items()})
        return record

    def train_step(self) -> dict:
        """One optimizer step (or a counted skip), this rank's part of it under torchrun. Returns the
        logged record (reduced over ranks)."""
        self.model.train()
        _seed_step(self.settings.seed, self.dist.rank, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        evaluated = self.energy.n_evaluated
        self._step_start = None
        record = self._begin_step()
        loss, terms = self.compute_loss()
        record.update(terms)
        record["dropped"] = record.get("dropped", 0)
        record["energy_evals_step"] = self.energy.n_evaluated - evaluated
        finite = bool(torch.isfinite(torch.as_tensor(loss)))
        if finite:
            loss.backward()
        if self.dist.enabled:  # every rank takes part, even one whose loss is not finite (NaN spreads)
            if not finite:
                for p in self.model.parameters():
                    p.grad = torch.full_like(p, float("nan")) if p.requires_grad else None
            dd.all_reduce_gradients(self.model.parameters())
            finite = True
        grad_norm = float("nan")
        if finite:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip))
        skipped = not math.isfinite(grad_norm)
        record = self._reduce_record(record)
        with self._signals_deferred():  # the update and its counters happen all together or not at all
            if skipped:
                self.n_skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
            else:
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update(self.model)
            lr = self.optimizer.param_groups[0]["lr"]
            with warnings.catch_warnings():  # a skipped step still advances the schedule, on purpose
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step",
                                        category=UserWarning)
                self.scheduler.step()
            self.n_dropped += record["dropped"]
            self.n_energy_evals += int(record.pop("energy_evals_step"))
            self.step += 1
            self._step_start = None
        record.update(step=self.step, loss=float(loss.detach()) if torch.is_tensor(loss) else float(loss),
                      grad_norm=grad_norm, lr=lr, skipped=int(skipped), energy_evals=self.n_energy_evals)
        if self.dist.enabled:
            record["loss"] = dd.all_reduce_mean({"loss": record["loss"]})["loss"]
        self._warn_if_many_skipped()
        with self._signals_deferred():  # a refinement and its step are saved together
            record.update(self._check_solve())
        return record

    def _check_solve(self) -> dict:
        """``train.solve_check_every``: the training solve against twice its steps (the same on every
        rank: same weights, same seed), logged as ``solve_gap``; a warning the first time its mean
        passes ``train.solve_check_warn``."""
        t = self.settings
        if not t.solve_check_every or self.step % t.solve_check_every:
            return {}
        gap = training_solve_gap(self.model, t.solve_check_samples, seed=t.seed + self.step)
        self.last_solve_gap = gap.get("solve_gap")
        if not gap or not (gap["solve_gap"] > t.solve_check_warn):  # NaN (nothing finite): no action
            return gap
        solve = self.model.solver_settings
        if t.solve_check_refine and solve.fixed_step and 2 * solve.n_steps <= t.solve_check_max_steps:
            self.set_training_solve(solve.refined(2))
            gap["solve_steps"] = int(self.model.n_steps)
            if dd.is_main():
                warnings.warn(f"step {self.step}: the training solve's log q moved by {gap['solve_gap']:.3g} nats "
                              f"(max {gap['solve_gap_max']:.3g}) at twice its steps; training goes on with "
                              f"{self.model.n_steps} {solve.solver} steps (train.solve_check_refine)",
                              RuntimeWarning, stacklevel=3)
        elif not self._solve_warned:
            self._solve_warned = True
            if dd.is_main():
                warnings.warn(f"step {self.step}: the training solve's log q moves by {gap['solve_gap']:.3g} nats "
                              f"(max {gap['solve_gap_max']:.3g}) at twice its steps, more than "
                              f"train.solve_check_warn = {t.solve_check_warn}: training may be exploiting the "
                              f"solver's error; raise flow.n_steps (or set train.solve_check_refine)",
                              RuntimeWarning, stacklevel=3)
        return gap

    def set_training_solve(self, settings) -> None:
        """Train with ``settings`` (a :class:`~eqflow.solvers.SolverSettings`) from now on; recorded in
        the checkpoint (``"train_solve"``) and in the metadata's config, so a resumed run, an export and
        an evaluation that falls back on ``flow.n_steps`` all see the solve the model was trained with."""
        m = self.model
        m.set_solver(settings)
        flow_cfg = (self.metadata or {}).get("config", {}).get("flow")
        if isinstance(flow_cfg, dict):
            flow_cfg.update(solver=m.solver, n_steps=m.n_steps, rtol=m.rtol, atol=m.atol)

    def apply_ema(self) -> None:
        """Put the averaged weights (``train.ema_decay``) into the model, for sampling and evaluation
        after training; nothing without EMA. The checkpoint already holds them as ``"model"``."""
        if self.ema is not None:
            self.ema.copy_to(self.model)

    def _warn_if_many_skipped(self) -> None:
        frac = self.settings.skip_warning_fraction
        if not self._skip_warned and self.step >= 10 and self.n_skipped > frac * self.step:
            self._skip_warned = True
            if dd.is_main():
                warnings.warn(f"{self.n_skipped} of {self.step} training steps were skipped (non-finite loss or "
                              f"gradient), more than train.skip_warning_fraction = {frac}: training is stalling",
                              RuntimeWarning, stacklevel=3)

    def validation_nll(self) -> float:
        """NLL (nats) of the fixed held-out samples, no graph kept: under the averaged weights when
        ``train.ema_decay`` is on (what checkpoints store as ``"model"``, evaluation scores and
        export ships), otherwise under the current ones."""
        from ..evaluation.metrics import nll
        self.model.eval()
        x = self.val_x.to(device=self._device(), dtype=self._dtype())
        bs = self.val_batch_size
        with torch.no_grad(), (self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext()):
            lq = torch.cat([self.val_log_prob(x[i:i + bs]) for i in range(0, x.shape[0], bs)])
        return nll(lq)

    # -- signals -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _signals_deferred(self):
        self._defer_signals = True
        try:
            yield
        finally:
            self._defer_signals = False
        if self._pending_signal is not None and not self.dist.enabled:
            signum, self._pending_signal = self._pending_signal, None
            raise _Stop(signum)

    def _on_signal(self, signum, frame):
        # Under torchrun every rank gets the signal but may be inside a collective: the ranks then
        # stop together at the next step boundary (see _agree), never one alone mid-step.
        if self._defer_signals or self.dist.enabled:
            self._pending_signal = signum
            return
        raise _Stop(signum)

    def _agree(self, elapsed: float) -> tuple[int | None, float]:
        """Under torchrun: the signal any rank got (or None) and the largest elapsed time, so that
        every rank stops at the same step."""
        if not self.dist.enabled:
            return self._pending_signal, elapsed
        t = torch.tensor([float(self._pending_signal or 0), elapsed], dtype=torch.float64,
                         device="cuda" if self.dist.backend == "nccl" else "cpu")
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        signum = int(t[0].item())
        return (signum or None), float(t[1].item())

    @contextlib.contextmanager
    def _stop_signals_saved(self):
        """SIGINT and SIGTERM raise inside the loop (main thread only; elsewhere they stay as they are)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _check_fresh_folder(self) -> None:
        if self._resumed or self.overwrite or self.step > 0:
            return
        if self.checkpoint_path.exists():
            raise RunFolderError(f"{self.out_dir} already holds a run (checkpoint.pt); continue it with "
                                 "--resume or replace it with --overwrite")

    # -- loop --------------------------------------------------------------------------------------
    def train(self) -> dict:
        """Run until ``settings.steps`` or the wall-clock budget. Returns a summary dict."""
        t = self.settings
        self._check_fresh_folder()
        main = dd.is_main()
        if main and self.overwrite and not self._resumed and self.step == 0 and self.metrics_path.exists():
            self.metrics_path.unlink()
        budget = None if t.budget_minutes is None else 60.0 * t.budget_minutes
        bar = tqdm(total=t.steps, initial=self.step, disable=not (self.progress and main), desc="train",
                   dynamic_ncols=True)
        stop_reason = "steps"
        last_step = 0.0  # the budget is a cap: a step that would end past it is not started
        log = open(self.metrics_path, "a") if main else contextlib.nullcontext()
        try:
            with self._stop_signals_saved(), log:
                try:
                    if self.val_x is not None and self.step == 0 and main:
                        log.write(json.dumps({"step": 0, "val_nll": self.validation_nll()}) + "\n")
                    while self.step < t.steps:
                        signum, elapsed = self._agree(self.elapsed + last_step)
                        self._clock_seconds = elapsed
                        if signum is not None:
                            raise _Stop(signum)
                        if budget is not None and elapsed > budget:
                            stop_reason = "budget"
                            break
                        t0 = time.perf_counter()
                        record = self.train_step()
                        last_step = time.perf_counter() - t0
                        self.elapsed += last_step
                        record["time"] = round(self.elapsed, 3)
                        if not main:
                            continue
                        if self.val_x is not None and self.step % self.val_every == 0:
                            record["val_nll"] = self.validation_nll()
                        if (self.step % t.log_every == 0 or self.step == t.steps or self.step == 1
                                or "val_nll" in record or record["skipped"] or "buffer_ess" in record
                                or "rung_change" in record):
                            log.write(json.dumps(record) + "\n")
                            log.flush()
                        bar.update(1)
                        # "batch_ess", not "ess": it is the training batch's, through the training solve and
                        # divergence (Hutchinson's noise takes DW4's 0.74 to ~0.02), not the model's ESS.
                        bar.set_postfix(loss=f"{record['loss']:.3f}",
                                        batch_ess=f"{record.get('ess_batch', float('nan')):.3f}")
                        if self.step % t.checkpoint_every == 0:
                            with self._signals_deferred():
                                self.save()
                except _Stop as stop:
                    self.optimizer.zero_grad(set_to_none=True)  # a step cut short leaves no trace
                    self._undo_step()
                    self.save()
                    raise TrainingInterrupted(self.step, stop.signum) from None
                except KeyboardInterrupt:  # raised by other code (a library's own SIGINT handling)
                    self.optimizer.zero_grad(set_to_none=True)
                    self._undo_step()
                    self.save()
                    raise TrainingInterrupted(self.step, signal.SIGINT) from None
        finally:
            bar.close()
        self.save()
        if self.ladder is not None and self.energy.temperature != self.ladder.target and main:
            warnings.warn(f"training stopped ({stop_reason}) at T = {self.energy.temperature}, before the annealing "
                          f"ladder reached the target temperature {self.ladder.target}: the rungs follow train.steps, "
                          "so lower train.steps, or set train.schedule_clock: time to fit them into the budget",
                          RuntimeWarning, stacklevel=2)
        return {"steps": self.step, "stop_reason": stop_reason, "train_seconds": round(self.elapsed, 1),
                "skipped_steps": self.n_skipped, "dropped_samples": self.n_dropped,
                "world_size": self.dist.world_size, "energy_evaluations": self.n_energy_evals,
                "final_temperature": self.energy.temperature,
                **({"train_solve_steps": int(self.model.n_steps)} if self.settings.solve_check_refine else {}),
                **({"train_solve_gap": self.last_solve_gap} if self.last_solve_gap is not None else {})}


def _make_ladder(anneal: AnnealConfig | None, total_steps: int) -> TemperatureLadder | None:
    """The :class:`TemperatureLadder` of ``anneal`` (None without temperatures)."""
    if anneal is None or anneal.temperatures is None:
        return None
    if anneal.fractions is not None:
        return TemperatureLadder.from_fractions(anneal.temperatures, total_steps, anneal.fractions)
    return TemperatureLadder(anneal.temperatures, anneal.steps_per_rung if anneal.steps_per_rung is not None else 0)


class _Stop(BaseException):
    """Internal: a stop signal arrived (not an Exception, so no library code swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _read_run_checkpoint(path: Path, fallback: bool) -> dict:
    """:func:`~eqflow.checkpoint.read_checkpoint` of a run's checkpoint, falling back to the copy one
    save older when the newest is missing or damaged (``fallback``)."""
    try:
        state = read_checkpoint(path)
    except CheckpointError as err:
        prev = previous_path(path)
        if not (fallback and prev.exists()):
            raise
        state = read_checkpoint(prev)
        warnings.warn(f"{err}; resuming from the previous checkpoint {prev.name} (step {state.get('step')})",
                      RuntimeWarning, stacklevel=3)
    check_checkpoint_format(state, path)
    return state


def load_model_weights(model, path):
    """Load the weights of a checkpoint written by :class:`Trainer` (a run folder or file) into
    ``model`` (built by hand the same way as the one trained). Returns ``model``."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    state = read_checkpoint(path)
    check_checkpoint_format(state, path)
    model.load_state_dict(state["model"])
    return model


def check_checkpoint_format(state: dict, path) -> None:
    if state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an eqflow checkpoint of this version "
                              f"(format {state.get('format')!r}, expected {CHECKPOINT_FORMAT!r})")
