"""Invariant node inputs of the vector fields: time embedding and node features."""
from __future__ import annotations

import math

import torch

__all__ = ["TimeEmbedding", "node_inputs", "check_node_features", "ScaledField"]


class TimeEmbedding(torch.nn.Module):
    """Fourier features of the flow time ``t``: ``[B] -> [B, 2·n_frequencies + 1]``.

    Frequencies ``π·1, π·2, ...`` resolve the unit time interval without learned parameters.
    """

    def __init__(self, n_frequencies: int = 4):
        super().__init__()
        self.register_buffer("freqs", math.pi * torch.arange(1, n_frequencies + 1,
                                                             dtype=torch.get_default_dtype()))
        self.out_features = 2 * n_frequencies + 1

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        wt = t[:, None] * self.freqs.to(t.dtype)
        return torch.cat([t[:, None], wt.sin(), wt.cos()], dim=-1)


def check_node_features(h: torch.Tensor | None, n_atoms: int, n_node_features: int) -> bool:
    """Validate node features ``h`` ``[B, N, F]`` against a field built for ``n_node_features``;
    True when the field has node features to read (False: ``h`` is absent or empty, as it must be)."""
    if n_node_features:
        if h is None:
            raise ValueError(f"this field expects node features h of shape [batch, {n_atoms}, "
                             f"{n_node_features}], got None")
        if h.dim() != 3 or h.shape[1] != n_atoms or h.shape[2] != n_node_features:
            raise ValueError(f"node features h must have shape [batch, {n_atoms}, {n_node_features}], "
                             f"got {tuple(h.shape)}")
        return True
    if h is not None and h.numel() and h.shape[-1] != 0:
        raise ValueError(f"this field was built with n_node_features=0 but got h of shape {tuple(h.shape)}")
    return False


def node_inputs(t_emb: torch.Tensor, h: torch.Tensor | None, n_atoms: int,
                n_node_features: int) -> torch.Tensor:
    """Concatenate node features ``h`` ``[B, N, F]`` with the time embedding broadcast to nodes."""
    b = t_emb.shape[0]
    parts = [t_emb[:, None, :].expand(b, n_atoms, t_emb.shape[-1])]
    if check_node_features(h, n_atoms, n_node_features):
        parts.append(h.to(t_emb.dtype).expand(b, -1, -1))
    return torch.cat(parts, dim=-1)


def check_field_inputs(t: torch.Tensor, x: torch.Tensor, dim: int) -> torch.Tensor:
    """Validate ``x`` ``[B, N, dim]`` and broadcast ``t`` (scalar or ``[B]``) to ``[B]``."""
    if x.dim() != 3:
        raise ValueError(f"x must have shape [batch, n_atoms, dim], got {tuple(x.shape)}")
    if x.shape[-1] != dim:
        raise ValueError(f"x has spatial dim {x.shape[-1]} but the field was built for dim={dim}")
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape [batch]={x.shape[0]}, got {tuple(t.shape)}")
    return t


class ScaledField(torch.nn.Module):
    """``v(t, x, h) = L · field(t, x / L, h)``: runs a field in units where atoms are ~1 apart.

    Molecules come in nm (bonds ~0.1): dividing by ``L = 0.1`` gives the network inputs of order one
    without changing any symmetry (scaling commutes with rotations, reflections, translations and
    permutations).
    """

    def __init__(self, field: torch.nn.Module, length_scale: float):
        super().__init__()
        if length_scale <= 0:
            raise ValueError(f"length_scale must be positive, got {length_scale}")
        self.field, self.length_scale = field, float(length_scale)
        self.n_node_features = getattr(field, "n_node_features", 0)
        self.dim = getattr(field, "dim", None)

    def forward(self, t, x, h=None):
        return self.length_scale * self.field(t, x / self.length_scale, h)

    @property
    def analytic_divergence(self) -> bool:
        return bool(getattr(self.field, "analytic_divergence", False))

    def velocity_and_divergence(self, t, x, h=None, create_graph: bool = False):
        # ∇_x · (L f(x / L)) = (∇·f)(x / L): the scale cancels in the divergence.
        v, div = self.field.velocity_and_divergence(t, x / self.length_scale, h, create_graph=create_graph)
        return self.length_scale * v, div
