"""Training loop: reverse KL and/or maximum likelihood, with checkpoints that survive crashes."""
from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Config, config_to_dict
from ..distributions import ReferenceData
from ..evaluation.metrics import ess
from .losses import maximum_likelihood_loss, reverse_kl_loss

__all__ = ["Trainer", "save_checkpoint_atomic", "make_scheduler", "seed_everything"]

CHECKPOINT_NAME = "checkpoint.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint_atomic(obj: dict, path) -> Path:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``.

    A crash or kill during the write leaves the previous checkpoint intact: ``os.replace`` is atomic
    on POSIX and Windows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def make_scheduler(optimizer, cfg: Config):
    """Linear warm-up, then constant, cosine (to ``lr_final``) or exponential (to ``lr_final``)."""
    t = cfg.train
    floor = t.lr_final / t.lr

    def factor(step: int) -> float:
        if t.warmup_steps and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
        if t.lr_schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if t.lr_schedule == "exponential":
            return floor ** progress
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Trainer:
    """Fits a flow to a target by reverse KL (energy only) and/or maximum likelihood.

    Parameters
    ----------
    cfg : the full configuration (``cfg.train`` drives the loop)
    flow : the flow (a :class:`~eqflow.flows.MixtureFlow` or :class:`~eqflow.flows.ContinuousFlow`)
    target : the :class:`~eqflow.targets.Energy`
    out_dir : run folder: ``checkpoint.pt`` and ``metrics.jsonl`` go here
    train_data : reference samples for the maximum-likelihood term (``train.ml_weight > 0``)
    progress : show a tqdm bar

    Steps whose loss or gradient is not finite are skipped (no parameter update) and counted;
    samples with non-finite energies are dropped inside the loss and counted. Gradients are clipped
    to ``train.grad_clip``. Checkpoints (model, optimizer, scheduler, RNG states, counters) are written
    atomically every ``train.checkpoint_every`` steps, at the end, and on Ctrl-C.
    """

    def __init__(self, cfg: Config, flow, target, out_dir, train_data: ReferenceData | None = None,
                 progress: bool = True, val_data: ReferenceData | None = None):
        self.cfg, self.flow, self.target = cfg, flow, target
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.train_data = train_data
        self.val_x = (None if val_data is None or cfg.eval.val_every <= 0
                      else val_data.positions[: cfg.eval.val_samples])
        self.progress = progress
        t = cfg.train
        if t.ml_weight > 0 and (train_data is None or len(train_data) == 0):
            raise ValueError("train.ml_weight > 0 but no reference samples were given for maximum likelihood")
        self.optimizer = torch.optim.Adam([p for p in flow.parameters() if p.requires_grad], lr=t.lr,
                                          weight_decay=t.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.step = 0
        self.n_skipped = 0
        self.n_dropped = 0
        self.elapsed = 0.0  # training seconds, summed over resumed runs (the budget counts these)

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": "eqflow-checkpoint-1",
            "config": config_to_dict(self.cfg),
            "model": self.flow.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "n_skipped": self.n_skipped,
            "n_dropped": self.n_dropped,
            "elapsed": self.elapsed,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }

    def save(self) -> Path:
        return save_checkpoint_atomic(self.state_dict(), self.checkpoint_path)

    def load(self, path=None) -> None:
        """Restore everything saved by :meth:`save`, including RNG states (resume is exact on CPU)."""
        path = Path(path or self.checkpoint_path)
        if not path.exists():
            raise FileNotFoundError(f"no checkpoint to resume from: {path}")
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.flow.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.n_skipped = state["step"], state["n_skipped"]
        self.n_dropped, self.elapsed = state["n_dropped"], state["elapsed"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        self._truncate_metrics()

    def _truncate_metrics(self) -> None:
        # Rows logged after the checkpoint belong to a run that will be redone.
        if not self.metrics_path.exists():
            return
        rows = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
        keep = [r for r in rows if r.get("step", 0) <= self.step]
        self.metrics_path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    # -- one step --------------------------------------------------------------------------------
    def compute_loss(self):
        """The configured loss on one batch: ``(loss, record)``."""
        t = self.cfg.train
        loss = 0.0
        record = {}
        if t.kl_weight > 0:
            kl, stats = reverse_kl_loss(self.flow, self.target, t.batch_size, self.cfg.target.energy_cut,
                                        kinetic_weight=t.kinetic_weight, jacobian_weight=t.jacobian_weight)
            loss = loss + t.kl_weight * kl
            record.update({k: stats[k] for k in ("kinetic", "jacobian") if k in stats})
            record.update(kl=stats["kl"], energy=stats["energy"], dropped=stats["n_dropped"],
                          ess_batch=ess(stats["log_w"].cpu().numpy()) if torch.isfinite(stats["log_w"]).any()
                          else 0.0)
        if t.ml_weight > 0:
            idx = torch.randint(len(self.train_data), (t.ml_batch_size,))
            x = self.train_data.positions[idx].to(device=self._device(), dtype=self._dtype())
            ml, stats = maximum_likelihood_loss(self.flow, x)
            loss = loss + t.ml_weight * ml
            record.update(nll=stats["nll"])
        return loss, record

    def _dtype(self):
        return next(self.flow.parameters()).dtype

    def _device(self):
        return next(self.flow.parameters()).device

    def train_step(self) -> dict:
        """One optimizer step (or a counted skip). Returns the logged record."""
        self.flow.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss, record = self.compute_loss()
        record["dropped"] = record.get("dropped", 0)
        self.n_dropped += record["dropped"]
        skipped = not torch.isfinite(loss)
        grad_norm = float("nan")
        if not skipped:
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.flow.parameters(), self.cfg.train.grad_clip))
            skipped = not math.isfinite(grad_norm)
        if skipped:
            self.n_skipped += 1
            self.optimizer.zero_grad(set_to_none=True)
            warnings.warn(f"step {self.step}: non-finite loss or gradient, step skipped "
                          f"({self.n_skipped} skipped so far)", RuntimeWarning, stacklevel=2)
        else:
            self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.step += 1
        record.update(step=self.step, loss=float(loss.detach()) if torch.is_tensor(loss) else float(loss),
                      grad_norm=grad_norm, lr=lr, skipped=int(skipped))
        return record

    def validation_nll(self) -> float:
        """NLL (nats) of the fixed held-out samples under the current flow, no graph kept."""
        from ..evaluation.metrics import nll
        self.flow.eval()
        x = self.val_x.to(device=self._device(), dtype=self._dtype())
        bs = self.cfg.eval.batch_size
        from ..generator import resolve_eval_divergence
        div = resolve_eval_divergence(self.cfg.eval.divergence, self.flow.n_atoms, self.flow.dim, x.device)
        with torch.no_grad():
            lq = torch.cat([self.flow.log_prob(x[i:i + bs], divergence=div)
                            for i in range(0, x.shape[0], bs)])
        return nll(lq)

    # -- loop --------------------------------------------------------------------------------------
    def train(self) -> dict:
        """Run until ``train.steps`` or the wall-clock budget. Returns a summary dict."""
        t = self.cfg.train
        budget = None if t.budget_minutes is None else 60.0 * t.budget_minutes
        bar = tqdm(total=t.steps, initial=self.step, disable=not self.progress, desc="train", dynamic_ncols=True)
        stop_reason = "steps"
        last_step = 0.0  # the budget is a cap: a step that would end past it is not started
        try:
            with open(self.metrics_path, "a") as log:
                if self.val_x is not None and self.step == 0:
                    log.write(json.dumps({"step": 0, "val_nll": self.validation_nll()}) + "\n")
                while self.step < t.steps:
                    if budget is not None and self.elapsed + last_step > budget:
                        stop_reason = "budget"
                        break
                    t0 = time.perf_counter()
                    record = self.train_step()
                    last_step = time.perf_counter() - t0
                    self.elapsed += last_step
                    record["time"] = round(self.elapsed, 3)
                    if self.val_x is not None and self.step % self.cfg.eval.val_every == 0:
                        record["val_nll"] = self.validation_nll()
                    if (self.step % t.log_every == 0 or self.step == t.steps or self.step == 1
                            or "val_nll" in record):
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", ess=f"{record.get('ess_batch', float('nan')):.3f}")
                    if self.step % t.checkpoint_every == 0:
                        self.save()
        except KeyboardInterrupt:
            stop_reason = "interrupted"
            self.save()
            raise
        finally:
            bar.close()
        self.save()
        return {"steps": self.step, "stop_reason": stop_reason, "train_seconds": round(self.elapsed, 1),
                "skipped_steps": self.n_skipped, "dropped_samples": self.n_dropped}
