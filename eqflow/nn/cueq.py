"""Depthwise (``"uvu"``) edge tensor products with gather/scatter: e3nn, or cuequivariance when installed.

``make_channelwise_tp`` returns a module ``tp(f [M, irreps_in.dim], sh [E, irreps_sh.dim],
weights [E, weight_numel], src [E], dst [E] or None, n_nodes) -> [n_nodes, irreps_out.dim]`` that
computes ``Σ_{e: dst_e = i} TP(f[src_e], sh_e; weights_e)``. ``dst=None`` declares the edges sorted
by receiver with the same number ``E / n_nodes`` for every node (dense graphs). Both backends hold no parameters, take weights
in the same order and give the same numbers, so a model trained with one runs with the other.

The ``"cueq"`` backend needs ``pip install 'eqflow[cueq]'`` (``cuequivariance-torch``; on NVIDIA GPUs
add ``cuequivariance-ops-torch-cu12`` for its fused kernels, which also fuse the gather and scatter).
Without the kernels it runs cuequivariance's pure-torch path (CPU included): correct, not faster.
"""
from __future__ import annotations

import torch
from e3nn import o3

__all__ = ["BACKENDS", "make_channelwise_tp", "cueq_available"]

BACKENDS = ("e3nn", "cueq")


def cueq_available() -> bool:
    """True when ``cuequivariance_torch`` can be imported."""
    try:
        import cuequivariance_torch  # noqa: F401
    except ImportError:
        return False
    return True


def _drop_constants(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _own_constants(module, state_dict, prefix, *args):
    _drop_constants(module, state_dict, prefix, None)
    state_dict.update({prefix + k: v for k, v in module._constants().items()})


class _EdgeTP(torch.nn.Module):
    """Base of the backends: their buffers are constants (Clebsch-Gordan coefficients, index maps)
    that differ between backends, so they stay out of state dicts and checkpoints."""

    def __init__(self):
        super().__init__()
        self.register_state_dict_post_hook(_drop_constants)
        self.register_load_state_dict_pre_hook(_own_constants)

    def _constants(self) -> dict:
        return {"tp." + k: v for k, v in self.tp.state_dict(keep_vars=True).items()}


class _E3NNChannelwiseTP(_EdgeTP):
    def __init__(self, irreps_in, irreps_sh, irreps_out, instructions):
        super().__init__()
        # component irreps, element paths: the normalization cuequivariance's product uses.
        self.tp = o3.TensorProduct(irreps_in, irreps_sh, irreps_out, instructions, shared_weights=False,
                                   internal_weights=False, irrep_normalization="component",
                                   path_normalization="element")
        self.weight_numel = self.tp.weight_numel
        self.irreps_out = self.tp.irreps_out

    def forward(self, f, sh, weights, src, dst, n_nodes: int):
        msg = self.tp(f[src], sh, weights)
        if dst is None:  # receiver-sorted, equal in-degree: a reshape-sum (cheaper backward than a scatter)
            return msg.view(n_nodes, -1, msg.shape[-1]).sum(1)
        return msg.new_zeros(n_nodes, msg.shape[-1]).index_add_(0, dst, msg)


class _CueqChannelwiseTP(_EdgeTP):
    def __init__(self, irreps_in, irreps_sh, irreps_out):
        super().__init__()
        import cuequivariance as cue
        import cuequivariance_torch as cuet

        kernels = torch.cuda.is_available()
        try:
            import cuequivariance_ops_torch  # noqa: F401
        except ImportError:
            kernels = False
        self.tp = cuet.ChannelWiseTensorProduct(
            cue.Irreps("O3", str(irreps_in)), cue.Irreps("O3", str(irreps_sh)),
            filter_irreps_out=[cue.O3(ir.l, ir.p) for ir in {ir for _, ir in irreps_out}],
            layout=cue.mul_ir, shared_weights=False, internal_weights=False,
            method=None if kernels else "naive", dtype=torch.get_default_dtype())
        if str(self.tp.irreps_out) != str(o3.Irreps(irreps_out)):  # guards the weight order
            raise RuntimeError(f"cuequivariance orders the product's outputs as {self.tp.irreps_out}, "
                               f"eqflow expects {irreps_out}")
        self.weight_numel = self.tp.weight_numel
        self.irreps_out = o3.Irreps(irreps_out)

    def forward(self, f, sh, weights, src, dst, n_nodes: int):
        if dst is None:
            dst = torch.arange(n_nodes, device=f.device).repeat_interleave(src.shape[0] // n_nodes)
        return self.tp(f, sh, weights, indices_1=src, indices_out=dst, size_out=n_nodes)


def make_channelwise_tp(irreps_in, irreps_sh, irreps_out, instructions, backend: str = "e3nn"):
    """The edge product of :class:`eqflow.nn.E3NNConv` on the chosen backend (see module doc)."""
    if backend == "e3nn":
        return _E3NNChannelwiseTP(irreps_in, irreps_sh, irreps_out, instructions)
    if backend == "cueq":
        if not cueq_available():
            raise ImportError("backend='cueq' needs cuequivariance-torch: pip install 'eqflow[cueq]' "
                              "(and cuequivariance-ops-torch-cu12 for the GPU kernels)")
        return _CueqChannelwiseTP(irreps_in, irreps_sh, irreps_out)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
