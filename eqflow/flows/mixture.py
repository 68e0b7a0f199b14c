"""Continuous flow from a mixture base, one component-conditioned flow per component."""
from __future__ import annotations

import torch

from ..distributions import MixtureBase
from ..geometry import assert_com_free, check_positions
from .continuous import ContinuousFlow, check_sample_count

__all__ = ["MixtureFlow"]


class MixtureFlow(ContinuousFlow):
    """``q(x) = Σ_k π_k q_k(x)`` where ``q_k`` pushes component ``k`` of a :class:`MixtureBase`
    through the flow with the one-hot index ``k`` appended to every node's features.

    ``log q(x) = logsumexp_k(log π_k + log q_k(x))`` is exact: the ``K`` reverse solves are batched
    into one solve of ``B·K`` configurations. The field must take ``F + K`` node features
    (``F`` = width of ``node_features``, 0 if None). With ``K = 1`` this is the plain flow.

    Parameters are those of :class:`ContinuousFlow`, with ``base`` a :class:`MixtureBase`.
    """

    def __init__(self, field: torch.nn.Module, base: MixtureBase, node_features=None, **kwargs):
        if not isinstance(base, MixtureBase):
            raise TypeError(f"MixtureFlow needs a MixtureBase, got {type(base).__name__}")
        super().__init__(field, base, node_features, **kwargs)
        f = 0 if self.node_features is None else self.node_features.shape[1]
        expected = f + base.n_components
        got = getattr(field, "n_node_features", expected)
        if got != expected:
            raise ValueError(f"the field takes {got} node features but MixtureFlow passes {expected} "
                             f"({f} atom features + {base.n_components} component one-hot)")

    @property
    def n_components(self) -> int:
        return self.base.n_components

    def _onehot(self, k: torch.Tensor, dtype) -> torch.Tensor:
        oh = torch.nn.functional.one_hot(k, self.n_components).to(dtype)
        return oh[:, None, :].expand(k.shape[0], self.n_atoms, self.n_components)

    def component_log_prob(self, x: torch.Tensor, components: torch.Tensor | None = None,
                           divergence: str | None = "default") -> torch.Tensor:
        """``log q_k(x)`` by reverse solves.

        Parameters
        ----------
        x : ``[B, N, dim]`` CoM-free
        components : ``[B]`` long, one component per row; None for all: returns ``[B, K]``
        """
        b, k_ = x.shape[0], self.n_components
        if components is None:
            xs = x.repeat_interleave(k_, dim=0)
            ks = torch.arange(k_, device=x.device).repeat(b)
        else:
            xs, ks = x, components
        z, delta = self.integrate(xs, 1.0, 0.0, h_extra=self._onehot(ks, x.dtype), divergence=divergence)
        lp = self.base.component_log_prob(z).gather(1, ks[:, None])[:, 0] + delta
        return lp.view(b, k_) if components is None else lp

    def log_prob(self, x: torch.Tensor, divergence: str | None = "default") -> torch.Tensor:
        check_positions(x, self.n_atoms, self.dim)
        assert_com_free(x)
        return torch.logsumexp(self.base.log_weights + self.component_log_prob(x, divergence=divergence), -1)

    def sample_with_components(self, n: int, with_log_prob: bool = True, stratified: bool = False,
                               divergence: str | None = "default"):
        """Draw ``n`` samples and say which component made each.

        Parameters
        ----------
        stratified : draw ``n / K`` samples from every component (in shuffled order) instead of
            ``k ~ π``; then ``π_k / n_k`` weights give an unbiased reverse-KL with exact gradients in ``π``

        Returns
        -------
        ``(x [n, N, dim], log_q [n] or None, k [n])``: ``log_q`` is the full mixture density.
        """
        if check_sample_count(n) == 0:
            x, log_q = self._empty(with_log_prob)
            return x, log_q, torch.zeros(0, dtype=torch.long, device=x.device)
        if stratified:
            k = torch.arange(self.n_components, device=self.base.logits.device).repeat(
                n // self.n_components + 1)[:n]
            k = k[torch.randperm(n, device=k.device)]
        else:
            k = torch.multinomial(self.base.log_weights.detach().exp(), n, replacement=True)
        z = self.base.sample_component(k)
        div = divergence if with_log_prob else None
        x, delta = self.integrate(z, 0.0, 1.0, h_extra=self._onehot(k, z.dtype), divergence=div)
        if not with_log_prob:
            return x, None, k
        own = self.base.component_log_prob(z).gather(1, k[:, None])[:, 0] - delta
        if self.n_components == 1:
            return x, own, k
        # Own component from the forward solve, the other K-1 by batched reverse solves.
        cols = torch.arange(self.n_components, device=k.device).expand(n, -1)
        other = cols != k[:, None]
        rows = torch.arange(n, device=k.device)[:, None].expand(n, self.n_components)[other]
        lp_other = self.component_log_prob(x[rows], cols[other], divergence=divergence)
        lp = torch.zeros(n, self.n_components, dtype=x.dtype, device=x.device)
        lp = lp.index_put((rows, cols[other]), lp_other).index_put((torch.arange(n, device=k.device), k), own)
        return x, torch.logsumexp(self.base.log_weights + lp, dim=-1), k

    def sample(self, n: int, with_log_prob: bool = True, divergence: str | None = "default"):
        """Draw ``n`` samples (components ``k ~ π``): ``(x [n, N, dim], log_q [n] or None)``."""
        x, log_q, _ = self.sample_with_components(n, with_log_prob, divergence=divergence)
        return x, log_q
