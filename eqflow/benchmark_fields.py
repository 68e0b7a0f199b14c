"""Cost of one vector-field evaluation as training uses it: EGNN against the e3nn field.

Per case (field kind, system size, batch): parameters, the forward pass alone (no graph), and the
forward pass + Hutchinson divergence (one vector-Jacobian product with ``create_graph=True``) +
backward of ``div + |v|²`` to the parameters, which is what every ODE stage of reverse-KL training
costs. Each case runs in its own spawned process (see :mod:`eqflow.benchmark`): peak memory is the
growth of the resident-set high-water mark during the first full-size forward + divergence + backward
(after a warm-up on a batch of 2), so it counts the autograd graph and its temporaries, not the
model or the interpreter; on CUDA it is ``torch.cuda.max_memory_allocated`` during that call.
Times are the median of ``reps`` further calls (``torch.cuda.synchronize`` on CUDA).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

import torch

from .benchmark import _peak_rss_bytes

__all__ = ["FieldCase", "run_field_case", "format_field_table", "SYSTEMS"]

# name -> (n_atoms, dim, n_atom_types): the systems of the shipped configs.
SYSTEMS = {"dw4": (4, 2, 0), "lj13": (13, 3, 0), "ala2": (22, 3, 4), "lj55": (55, 3, 0)}


@dataclass
class FieldCase:
    field: str  # "egnn" | "e3nn" | "e3nn-cueq" | "e3nn-compile"
    system: str
    n_atoms: int
    dim: int
    n_types: int
    batch: int = 64
    reps: int = 5
    egnn: dict = field(default_factory=lambda: dict(hidden=32, n_layers=3))
    e3nn: dict = field(default_factory=dict)  # E3NNField keyword arguments (defaults: the library's)
    seed: int = 0
    device: str = "cpu"


def build_case_field(case: FieldCase) -> torch.nn.Module:
    from .nn import E3NNField, EGNNField

    if case.field == "egnn":
        return EGNNField(dim=case.dim, n_node_features=case.n_types, **case.egnn)
    backend = "cueq" if case.field == "e3nn-cueq" else "e3nn"
    return E3NNField(dim=case.dim, n_node_features=case.n_types, backend=backend, **case.e3nn)


def run_field_case(case: FieldCase) -> dict:
    """Build the field of ``case`` and measure it in this process (see the module doc)."""
    from .flows import hutchinson_divergence

    torch.manual_seed(case.seed)
    device = torch.device(case.device)
    cuda = device.type == "cuda"
    if case.field == "e3nn-compile":
        import e3nn

        e3nn.set_optimization_defaults(jit_script_fx=False)  # TorchScript modules do not compile
    net = build_case_field(case).to(device)
    n_params = sum(p.numel() for p in net.parameters())
    fn = torch.compile(net) if case.field == "e3nn-compile" else net

    def inputs(b):
        x = torch.randn(b, case.n_atoms, case.dim, device=device)
        h = None
        if case.n_types:
            types = torch.arange(case.n_atoms, device=device) % case.n_types
            h = torch.nn.functional.one_hot(types, case.n_types).to(x.dtype)[None].expand(b, -1, -1)
        return torch.rand(b, device=device), x, h

    def forward(b):
        t, x, h = inputs(b)
        with torch.no_grad():
            fn(t, x, h)

    def full(b):
        t, x, h = inputs(b)
        x.requires_grad_(True)
        v = fn(t, x, h)
        noise = torch.randint(0, 2, x.shape, device=device).to(x.dtype) * 2 - 1
        div = hutchinson_divergence(v, x, noise, create_graph=True)
        (div.sum() + v.pow(2).sum()).backward()
        net.zero_grad(set_to_none=True)

    def timed(f):
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        f(case.batch)
        if cuda:
            torch.cuda.synchronize(device)
        return 1e3 * (time.perf_counter() - t0)

    out = dict(asdict(case), params=n_params)
    forward(2)
    forward(case.batch)
    out["forward_ms"] = statistics.median(timed(forward) for _ in range(case.reps))
    try:
        full(2)
    except RuntimeError as exc:  # e.g. double backward through a compiled graph
        out["full_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        return out
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = _peak_rss_bytes()
    timed(full)
    out["peak_mb"] = (torch.cuda.max_memory_allocated(device) if cuda else max(0, _peak_rss_bytes() - rss0)) / 1e6
    out["full_ms"] = statistics.median(timed(full) for _ in range(case.reps))
    return out


def format_field_table(rows: list[dict]) -> str:
    """One text table; ``vs egnn`` is the forward + divergence + backward time over EGNN's on that system."""
    head = (f"{'system':>10} {'field':>13} {'params':>7} {'fwd ms':>8} {'fwd+div+bwd ms':>15} "
            f"{'peak MB':>8} {'vs egnn':>8}")
    lines = [head, "-" * len(head)]
    egnn = {(r["system"], r["batch"]): r.get("full_ms") for r in rows if r["field"] == "egnn"}
    notes = []
    for r in rows:
        name = f"{r['system']} {r['n_atoms']}x{r['dim']}"
        if "error" in r or "na" in r:
            lines.append(f"{name:>10} {r['field']:>13} {'n/a':>7} {'n/a':>8} {'n/a':>15} {'n/a':>8} {'':>8}")
            notes.append(f"  {r['field']} on {r['system']}: {r.get('na') or r['error']}")
            continue
        full = r.get("full_ms")
        base = egnn.get((r["system"], r["batch"]))
        ratio = f"{full / base:.2f}x" if full and base else "-"
        full_s = f"{full:.1f}" if full is not None else "n/a"
        peak_s = f"{r['peak_mb']:.0f}" if "peak_mb" in r else "n/a"
        lines.append(f"{name:>10} {r['field']:>13} {r['params']:>7} {r['forward_ms']:>8.1f} {full_s:>15} "
                     f"{peak_s:>8} {ratio:>8}")
        if "full_error" in r:
            notes.append(f"  {r['field']} on {r['system']}: fwd+div+bwd failed: {r['full_error']}")
    return "\n".join(lines + notes)
