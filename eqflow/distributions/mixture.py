"""Mixture of CoM-free base distributions whose component index conditions the vector field."""
from __future__ import annotations


import torch

from ..geometry import assert_com_free, check_positions, com_free_dim, remove_mean
from .gaussian import com_free_gaussian_log_prob

__all__ = ["MixtureBase"]


class MixtureBase(torch.nn.Module):
    """K CoM-free Gaussians with learnable weights ``π_k`` and scales ``σ_k``, or K given components.

    Each component is pushed through the flow with its index given to the vector field as an
    invariant node feature (see :class:`eqflow.flows.MixtureFlow`), so different components can be
    carried to different modes. On its own the base density is
    ``log q(x) = logsumexp_k(log π_k + log N_V(x; σ_k))``.

    Parameters
    ----------
    n_atoms, dim : shape of one configuration
    n_components : K
    scales : initial ``σ_k`` (a float for all or a sequence of K)
    learn_weights, learn_scales : train the logits of ``π`` and ``log σ``
    components : optional sequence of K CoM-free distributions on ``[n_atoms, dim]`` (e.g.
        :class:`~eqflow.distributions.HarmonicBase` or ``CoMFreeGaussian``) with ``sample(n, generator)``,
        ``log_prob_unchecked(x)`` and ``scale``; they replace the built-in Gaussians, so ``scales`` and
        ``learn_scales`` are ignored (each component owns its scale) and ``n_components`` may be None
    """

    def __init__(self, n_atoms: int, dim: int, n_components: int | None = None, scales=1.0,
                 learn_weights: bool = True, learn_scales: bool = True, components=None):
        super().__init__()
        if components is not None:
            components = list(components)
            if n_components is None:
                n_components = len(components)
            if len(components) != n_components:
                raise ValueError(f"got {len(components)} components for n_components={n_components}")
            for c in components:
                if (c.n_atoms, c.dim) != (n_atoms, dim):
                    raise ValueError(f"component {type(c).__name__} is on [{c.n_atoms}, {c.dim}], "
                                     f"the mixture on [{n_atoms}, {dim}]")
        if n_components is None or n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {n_components}")
        self.n_atoms, self.dim, self.n_components = int(n_atoms), int(dim), int(n_components)
        self.components = None if components is None else torch.nn.ModuleList(components)
        if self.components is not None:
            logits = torch.zeros(n_components)
            if learn_weights:
                self.logits = torch.nn.Parameter(logits)
            else:
                self.register_buffer("logits", logits)
            return
        scales = torch.as_tensor(scales, dtype=torch.get_default_dtype()).expand(n_components).clone()
        if (scales <= 0).any():
            raise ValueError(f"scales must be positive, got {scales.tolist()}")
        logits = torch.zeros(n_components)
        log_scales = scales.log()
        if learn_weights:
            self.logits = torch.nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)
        if learn_scales:
            self.log_scales = torch.nn.Parameter(log_scales)
        else:
            self.register_buffer("log_scales", log_scales)

    @property
    def event_dim(self) -> int:
        return com_free_dim(self.n_atoms, self.dim)

    @property
    def log_weights(self) -> torch.Tensor:
        """``log π_k``, ``[K]``."""
        return torch.log_softmax(self.logits, dim=0)

    @property
    def scales(self) -> torch.Tensor:
        """``σ_k`` ``[K]`` (with given components: each component's ``scale``)."""
        if self.components is not None:
            return torch.stack([torch.as_tensor(c.scale) for c in self.components])
        return self.log_scales.exp()

    def sample_component(self, component: torch.Tensor,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one sample per entry of ``component`` ``[n]`` (long): ``[n, n_atoms, dim]``."""
        if self.components is not None:
            # A loop over the K components (not the samples): each draws its own rows.
            parts, rows = [], []
            for k, comp in enumerate(self.components):
                idx = (component == k).nonzero()[:, 0]
                parts.append(comp.sample(idx.shape[0], generator))
                rows.append(idx)
            out = torch.cat(parts)
            return torch.empty_like(out).index_copy(0, torch.cat(rows), out)
        eps = torch.randn(component.shape[0], self.n_atoms, self.dim, generator=generator,
                          dtype=self.log_scales.dtype, device=self.log_scales.device)
        return remove_mean(eps) * self.scales[component][:, None, None]

    def sample(self, n: int, generator: torch.Generator | None = None):
        """Draw ``n`` samples: ``(x [n, n_atoms, dim], component [n])``.

        Components are drawn i.i.d. from ``π``, so the samples come in random order.
        """
        probs = self.log_weights.detach().exp()
        k = torch.multinomial(probs, n, replacement=True, generator=generator)
        return self.sample_component(k, generator), k

    def component_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log q_k(x)`` for every component: ``[batch, K]`` (x CoM-free, not checked)."""
        if self.components is not None:
            return torch.stack([c.log_prob_unchecked(x) for c in self.components], dim=-1)
        return com_free_gaussian_log_prob(x[:, None], self.scales[None, :], self.n_atoms, self.dim)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Mixture log-density ``[batch]`` on V."""
        check_positions(x, self.n_atoms, self.dim)
        assert_com_free(x)
        return torch.logsumexp(self.log_weights + self.component_log_prob(x), dim=-1)
