"""Exponential moving average (EMA, Polyak averaging) of a model's trainable parameters.

Reverse KL's gradient is a noisy Monte Carlo estimate, so the last iterate of a run wanders around
the optimum by about the learning rate times that noise; the average of the recent iterates sits
closer to it. The Trainer keeps the average beside the training weights and checkpoints store it
as *the* model (``"model"``), with the raw weights under ``"train_model"`` for resume.

Why not ``torch.optim.swa_utils.AveragedModel``: it deep-copies the whole module (a flow may hold a
base distribution, a mixture and non-copyable references) and prefixes its state dict with
``module.``; here only the parameter tensors are averaged and swapped, so the checkpoint's
``"model"`` stays a plain state dict that every builder loads.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["ParameterEMA"]


class ParameterEMA:
    """``avg <- avg + (1 - d_k) (theta - avg)`` after every optimizer step ``k``, over the model's
    trainable parameters.

    The decay warms up as ``d_k = min(decay, (1 + k) / (10 + k))`` (``k`` = updates so far), so the
    average does not remember the random initialization for ``1 / (1 - decay)`` steps.

    Parameters
    ----------
    model : the ``torch.nn.Module`` being trained
    decay : in [0, 1); 0.99 averages over roughly the last 100 steps
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.average = {n: params[n].detach().clone() for n in self.names}
        self.n_updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.n_updates) / (10.0 + self.n_updates))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        params = dict(model.named_parameters())
        weight = 1.0 - self.current_decay()
        for n in self.names:  # a few dozen tensors: a loop costs microseconds per step
            self.average[n].lerp_(params[n].detach(), weight)
        self.n_updates += 1

    def model_state_dict(self, model: torch.nn.Module) -> dict:
        """``model.state_dict()`` with the averaged parameters in place of the trained ones."""
        state = model.state_dict()
        for n in self.names:
            state[n] = self.average[n].clone()
        return state

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Write the averaged parameters into ``model`` (for sampling and evaluation)."""
        params = dict(model.named_parameters())
        for n in self.names:
            params[n].copy_(self.average[n])

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        """The averaged parameters in ``model`` inside the block, the trained ones back afterwards
        (in place: the optimizer's references to the parameters stay valid).

        For scoring what checkpoints store as ``"model"`` (validation NLL) without ending training.
        """
        params = dict(model.named_parameters())
        trained = {n: params[n].detach().clone() for n in self.names}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n in self.names:
                    params[n].copy_(trained[n])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "n_updates": self.n_updates}

    def load(self, averaged_model_state: dict, state: dict | None) -> None:
        """Restore from a checkpoint: the averaged parameters from its ``"model"`` state dict and the
        update count from ``state`` (None: a checkpoint written without EMA, then the average starts
        at its weights)."""
        for n in self.names:
            self.average[n].copy_(averaged_model_state[n])
        self.n_updates = 0 if state is None else int(state["n_updates"])
