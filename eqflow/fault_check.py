"""Fault injection against the real code: each fault a user or a machine can cause, what eqflow must do,
and what it did. ``scripts/fault_check.py`` prints the table and exits non-zero on any failure.

Every check builds real parts (OpenMM alanine dipeptide, DW4/LJ13 targets, tiny flows, real run
folders in a temporary directory, the real ``scripts/train_eq.py`` in a subprocess); nothing is mocked
except the moment a fault happens.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

__all__ = ["FaultResult", "FAULTS", "run_fault_checks", "format_fault_table", "TINY", "tiny_config", "tiny_trainer"]

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "target": {"name": "dw4", "reference": None},
    "field": {"hidden": 8, "n_layers": 2},
    "flow": {"solver": "rk4", "n_steps": 2, "base_scale": 2.0},
    "train": {"steps": 6, "batch_size": 16, "lr": 1e-2, "checkpoint_every": 100, "log_every": 1,
              "lr_schedule": "constant"},
    "eval": {"n_samples": 32, "batch_size": 32, "nll_samples": 0, "solver_check": 0},
}


@dataclass
class FaultResult:
    fault: str
    expected: str
    observed: str
    ok: bool

    @property
    def verdict(self) -> str:
        return "pass" if self.ok else "FAIL"


FAULTS: list[tuple[str, str, Callable[[Path], tuple[str, bool]]]] = []


def _fault(name: str, expected: str):
    def register(fn):
        FAULTS.append((name, expected, fn))
        return fn
    return register


# -- helpers -----------------------------------------------------------------------------------
def _alanine():
    from .targets.molecular import alanine_dipeptide
    return alanine_dipeptide("vacuum", platform="Reference")


def _configs(mol, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return mol.positions[None] + 0.01 * torch.randn((n, mol.n_atoms, 3), dtype=torch.float64, generator=g)


def tiny_config(**train):
    """:data:`TINY` with ``train`` keys replaced, as a Config (also used by the tests)."""
    from .config import config_from_dict
    d = json.loads(json.dumps(TINY))
    d["train"].update(train)
    return config_from_dict(d)


def tiny_trainer(cfg, out, target=None):
    """A Trainer of ``cfg``'s flow (seeded) writing to ``out``, with the config as metadata."""
    from .builders import build_flow, build_target
    from .config import config_to_dict
    from .training import Trainer
    torch.manual_seed(cfg.train.seed)
    target = target or build_target(cfg)
    return Trainer(build_flow(cfg, target), target, cfg.train, out_dir=out, progress=False,
                   metadata={"config": config_to_dict(cfg)})


def _losses(path) -> list[float]:
    return [json.loads(line)["loss"] for line in open(path) if '"loss"' in line]


def _one_line(err: str) -> bool:
    return len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _train_script(args, cwd, **kw):
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train_eq.py"), *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def _write_cfg(tmp: Path, **train) -> Path:
    import yaml
    d = json.loads(json.dumps(TINY))
    d["train"].update(train)
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


# -- the OpenMM worker pool ----------------------------------------------------------------------
@_fault("OpenMM worker killed while idle", "1st call: WorkerError; 2nd call: the correct energy")
def _worker_killed_idle(tmp):
    from .errors import WorkerError
    from .targets.openmm_bridge import OpenMMEnergy
    mol = _alanine()
    a, b = _configs(mol, 4, 0), _configs(mol, 1, 1)
    with OpenMMEnergy(mol.system, 300.0, n_workers=2, timeout=30) as e:
        e(a)
        os.kill(e._pool[0].pid, signal.SIGKILL)
        e._pool[0].proc.wait()
        try:
            e(b)
            first = "returned a value"
        except WorkerError as err:
            first = f"WorkerError ({str(err)[:40]}...)"
        u = e(b)
    ref = mol.energy(b)
    ok = first.startswith("WorkerError") and torch.equal(u, ref)
    return f"{first}; then {float(u[0]):.3f} kT (in-process {float(ref[0]):.3f})", ok


@_fault("KeyboardInterrupt between a request and its reply", "pool closed; next call correct")
def _worker_interrupted(tmp):
    from .targets.openmm_bridge import OpenMMEnergy, _Worker
    mol = _alanine()
    a, b = _configs(mol, 6, 2), _configs(mol, 3, 3)
    real = _Worker.receive
    with OpenMMEnergy(mol.system, 300.0, n_workers=2, timeout=30) as e:
        e(a)

        def interrupted(self, request_id, timeout):
            real(self, request_id, timeout)
            raise KeyboardInterrupt

        _Worker.receive = interrupted
        try:
            e(a)
            raised = False
        except KeyboardInterrupt:
            raised = True
        finally:
            _Worker.receive = real
        closed = e._pool is None
        same = torch.equal(e(b), mol.energy(b))
    return f"KeyboardInterrupt raised: {raised}, pool closed: {closed}, next call correct: {same}", \
        raised and closed and same


@_fault("OpenMM worker stopped (SIGSTOP)", "WorkerError naming the pid within the timeout (2 s)")
def _worker_stopped(tmp):
    from .errors import WorkerError
    from .targets.openmm_bridge import OpenMMEnergy
    mol = _alanine()
    a = _configs(mol, 4, 4)
    with OpenMMEnergy(mol.system, 300.0, n_workers=2, timeout=2.0) as e:
        e(a)
        pid = e._pool[1].pid
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            e(a)
            return "returned a value", False
        except WorkerError as err:
            dt = time.monotonic() - t0
            named = str(pid) in str(err)
        again = torch.equal(e(a), mol.energy(a))
    return f"WorkerError after {dt:.1f} s, pid named: {named}, next call correct: {again}", \
        named and dt < 10 and again


@_fault("stale reply left in a worker's pipe", "refused by request id; next call correct")
def _worker_stale(tmp):
    from .errors import WorkerError
    from .targets.openmm_bridge import OpenMMEnergy
    mol = _alanine()
    a, b = _configs(mol, 2, 5), _configs(mol, 2, 6)
    with OpenMMEnergy(mol.system, 300.0, n_workers=1, timeout=30) as e:
        e(a)
        e._pool[0].send(999, "eval", a.numpy(), 5.0)
        try:
            e(b)
            return "the stale reply was returned", False
        except WorkerError as err:
            msg = str(err)
        same = torch.equal(e(b), mol.energy(b))
    return f"{msg[msg.index('answered'):][:45]}; next call correct: {same}", same


@_fault("OpenMM worker killed mid-batch", "WorkerError; pool rebuilt on the next call")
def _worker_killed_busy(tmp):
    from .errors import WorkerError
    from .targets.openmm_bridge import OpenMMEnergy, _Worker
    mol = _alanine()
    a = _configs(mol, 4, 7)
    real = _Worker.send
    with OpenMMEnergy(mol.system, 300.0, n_workers=2, timeout=30) as e:
        e(a)

        def send_then_die(self, request_id, kind, payload, timeout):
            real(self, request_id, kind, payload, timeout)
            os.kill(self.pid, signal.SIGKILL)

        _Worker.send = send_then_die
        try:
            e(a)
            raised = False
        except WorkerError:
            raised = True
        finally:
            _Worker.send = real
        same = torch.equal(e(a), mol.energy(a))
    return f"WorkerError: {raised}, next call correct: {same}", raised and same


# -- gradients -------------------------------------------------------------------------------------
@_fault("non-finite rows in a batch (LJ13 overlap, DW4 coincident)", "gradient = that of the finite rows alone")
def _nonfinite_rows(tmp):
    from .targets import DoubleWell, lj13
    from .training.losses import reverse_kl_loss

    class Fixed(torch.nn.Module):
        def __init__(self, x):
            super().__init__()
            self.register_buffer("x", x)
            self.scale = torch.nn.Parameter(torch.tensor(1.1, dtype=x.dtype))

        def sample(self, n):
            x = self.scale * self.x[:n]
            return x, -0.5 * (x ** 2).flatten(1).sum(-1)

    out = []
    ok = True
    for target in (DoubleWell(), lj13()):
        torch.manual_seed(0)
        good = torch.randn(6, target.n_atoms, target.dim, dtype=torch.float64)
        good = good - good.mean(1, keepdim=True)
        bad = good[:2].clone()
        bad[:, 1] = bad[:, 0]
        grads = []
        for x in (torch.cat([good[:3], bad, good[3:]]), good):
            m = Fixed(x)
            loss, stats = reverse_kl_loss(m, target, len(x))
            loss.backward()
            grads.append(m.scale.grad.clone())
        same = bool(torch.isfinite(grads[0]) and torch.equal(grads[0], grads[1]))
        ok &= same
        out.append(f"{type(target).__name__}: {'equal' if same else f'{float(grads[0])} vs {float(grads[1])}'}")
    return ", ".join(out), ok


# -- run folders and checkpoints -----------------------------------------------------------------------
@_fault("fresh run into a folder that holds a run", "refused (one line) unless --resume/--overwrite")
def _fresh_into_existing(tmp):
    cfg = _write_cfg(tmp, steps=1)
    out = tmp / "run"
    first = _train_script(["--config", str(cfg), "--out", str(out), "--no-progress", "--no-eval"], tmp)
    first.communicate(timeout=300)
    before = (out / "checkpoint.pt").read_bytes()
    second = _train_script(["--config", str(cfg), "--out", str(out), "--no-progress", "--no-eval"], tmp)
    _, err = second.communicate(timeout=300)
    kept = (out / "checkpoint.pt").read_bytes() == before
    return f"exit {second.returncode}: '...{err.strip()[err.find(' already'):]}'; checkpoint untouched: {kept}", \
        second.returncode == 2 and _one_line(err) and kept


@_fault("checkpoint with 64 flipped bytes", "refused with one line (CRC check)")
def _corrupt_checkpoint(tmp):
    from . import load_checkpoint
    from .errors import CheckpointError
    tr = tiny_trainer(tiny_config(steps=2), tmp)
    tr.train()
    data = bytearray(tr.checkpoint_path.read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.choice(np.arange(len(data) // 4, len(data) // 2), 64, replace=False):
        data[i] ^= 0xFF
    tr.checkpoint_path.write_bytes(bytes(data))
    try:
        load_checkpoint(tmp)
        return "loaded silently", False
    except CheckpointError as err:
        msg = str(err)
        return f"CheckpointError: ...{msg[msg.find(' is damaged'):]}", "\n" not in msg


@_fault("checkpoint carrying a pickled object that runs code", "refused; the code never runs")
def _unsafe_checkpoint(tmp):
    from . import load_checkpoint
    from .errors import CheckpointError
    marker = tmp / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "eqflow-checkpoint-2", "evil": Payload()}, tmp / "checkpoint.pt")
    try:
        load_checkpoint(tmp)
        refused = False
    except CheckpointError:
        refused = True
    return f"refused: {refused}, code ran: {marker.exists()}", refused and not marker.exists()


@_fault("damaged newest checkpoint on --resume", "falls back to the previous checkpoint, with a warning")
def _fallback(tmp):
    import warnings
    tr = tiny_trainer(tiny_config(steps=4, checkpoint_every=2), tmp)
    tr.train()
    tr.checkpoint_path.write_bytes(b"garbage")
    again = tiny_trainer(tiny_config(steps=6, checkpoint_every=2), tmp)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again.load()
    warned = any("previous checkpoint" in str(w.message) for w in caught)
    return f"resumed at step {again.step}, warned: {warned}", again.step == 4 and warned


@_fault("temporary file left by a write killed with kill -9", "removed when the folder is used again")
def _temp_files(tmp):
    tr = tiny_trainer(tiny_config(steps=2), tmp)
    tr.train()
    dead = tmp / ".checkpoint.pt.tmp-999999999-abc123.pt"
    dead.write_bytes(b"partial")
    tiny_trainer(tiny_config(steps=2), tmp)
    return f"left behind: {dead.exists()}", not dead.exists()


@_fault("metrics line cut short by a kill", "tolerated on --resume")
def _truncated_metrics(tmp):
    tr = tiny_trainer(tiny_config(steps=3, checkpoint_every=3), tmp)
    tr.train()
    with open(tr.metrics_path, "a") as fh:
        fh.write('{"step": 4, "loss": 1.2')
    again = tiny_trainer(tiny_config(steps=5), tmp)
    again.load()
    again.train()
    steps = [json.loads(line)["step"] for line in open(tr.metrics_path)]
    return f"logged steps {steps}", steps == [1, 2, 3, 4, 5]


# -- stops -------------------------------------------------------------------------------------------
@_fault("SIGTERM in the middle of a step, then --resume", "one line; resumed losses = uninterrupted (1e-6)")
def _sigterm_resume(tmp):
    from .builders import build_target
    from .training import TrainingInterrupted
    full = tiny_trainer(tiny_config(steps=6), tmp / "full")
    full.train()
    cfg = tiny_config(steps=6)
    target = build_target(cfg)
    energy, calls = target._energy, {"n": 0}

    def energy_then_sigterm(x):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return energy(x)

    target._energy = energy_then_sigterm
    part = tiny_trainer(cfg, tmp / "part", target=target)
    try:
        part.train()
        return "not interrupted", False
    except TrainingInterrupted as stop:
        line = str(stop)
    target._energy = energy
    resumed = tiny_trainer(cfg, tmp / "part")
    resumed.load()
    resumed.train()
    diff = float(np.max(np.abs(np.subtract(_losses(resumed.metrics_path), _losses(full.metrics_path)))))
    return f"'{line}'; max |Δloss| {diff:.1e}", diff <= 1e-6 and line.startswith("checkpoint saved at step 3")


@_fault("SIGTERM to scripts/train_eq.py", "exit 143, last line 'checkpoint saved at step N, ...', no traceback")
def _sigterm_script(tmp):
    cfg = _write_cfg(tmp, steps=100000, checkpoint_every=100000)
    out = tmp / "run"
    proc = _train_script(["--config", str(cfg), "--out", str(out), "--no-progress"], tmp)
    t0 = time.time()
    while time.time() - t0 < 120 and not (out / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    return f"exit {proc.returncode}: '{last}'", \
        proc.returncode == 143 and last.startswith("checkpoint saved at step") and "Traceback" not in err


@_fault("kill -9 mid-run, then --resume", "resumes from the last checkpoint and finishes")
def _kill9(tmp):
    from .checkpoint import read_checkpoint
    cfg = _write_cfg(tmp, steps=40, checkpoint_every=2)
    out = tmp / "run"
    args = ["--config", str(cfg), "--out", str(out), "--no-progress", "--no-eval"]
    proc = _train_script(args, tmp)
    t0 = time.time()
    while time.time() - t0 < 120:
        try:
            if read_checkpoint(out / "checkpoint.pt")["step"] >= 4:
                break
        except Exception:
            pass
        time.sleep(0.1)
    proc.kill()
    proc.communicate()
    at = read_checkpoint(out / "checkpoint.pt")["step"]
    again = _train_script([*args, "--resume"], tmp)
    _, err = again.communicate(timeout=300)
    end = read_checkpoint(out / "checkpoint.pt")["step"]
    return f"killed with checkpoint at step {at}; resumed to step {end} (exit {again.returncode})", \
        again.returncode == 0 and end == 40


# -- bad input ---------------------------------------------------------------------------------------
@_fault("unknown config key / unknown target / no CUDA", "one line each, exit 2, no traceback")
def _cli_errors(tmp):
    cfg = _write_cfg(tmp, steps=1)
    results = []
    for extra in (["--set", "train.stepz=3"], ["--set", "target.name=nope"], ["--device", "cuda:7"]):
        p = _train_script(["--config", str(cfg), "--out", str(tmp / "run"), "--no-progress", *extra], tmp)
        _, err = p.communicate(timeout=300)
        results.append(p.returncode == 2 and _one_line(err) and err.startswith("error:"))
    return f"{sum(results)} of {len(results)} one-line errors", all(results)


@_fault("non-finite positions to log_prob; sample(0)", "ValueError naming it; empty tensors")
def _bad_positions(tmp):
    from .builders import build_flow, build_target
    cfg = tiny_config()
    flow = build_flow(cfg, build_target(cfg))
    x, lq = flow.sample(0)
    x3 = flow.sample(3)[0].detach()
    x3[0, 0, 0] = float("nan")
    try:
        flow.log_prob(x3)
        return "log_prob returned", False
    except ValueError as err:
        named = "non-finite" in str(err)
    return f"sample(0) shapes {tuple(x.shape)}, {tuple(lq.shape)}; log_prob error names it: {named}", \
        x.shape[0] == 0 and lq.shape[0] == 0 and named


@_fault("empty or non-PDB file as a molecule", "ValueError that says so")
def _bad_pdb(tmp):
    from .targets.molecular import MolecularSystem
    out = []
    for name, content in (("empty.pdb", b""), ("image.pdb", b"\x89PNG\r\n\x1a\n\x00")):
        path = tmp / name
        path.write_bytes(content)
        try:
            MolecularSystem(str(path))
            out.append(f"{name}: accepted")
        except ValueError as err:
            out.append(f"{name}: ValueError '...{str(err).split(name)[-1]}'")
    return "; ".join(out), all("accepted" not in o for o in out)


def run_fault_checks(only: list[str] | None = None, progress: Callable[[str], None] | None = None
                     ) -> list[FaultResult]:
    """Run every registered fault (or those whose name contains one of ``only``) in its own
    temporary folder; an unexpected exception is a failure with its last line as the observation."""
    results = []
    for name, expected, fn in FAULTS:
        if only and not any(o.lower() in name.lower() for o in only):
            continue
        if progress:
            progress(name)
        with tempfile.TemporaryDirectory(prefix="eqflow-fault-") as d:
            try:
                observed, ok = fn(Path(d))
            except BaseException as err:  # noqa: BLE001 - a fault check must report, not crash
                if isinstance(err, SystemExit):
                    raise
                last = traceback.format_exception_only(type(err), err)[-1].strip()
                observed, ok = f"unexpected {last}", False
        results.append(FaultResult(name, expected, observed, bool(ok)))
    return results


def format_fault_table(results: list[FaultResult]) -> str:
    """``fault | expected | observed | verdict`` as a Markdown table."""
    rows = ["| fault | expected | observed | verdict |", "|---|---|---|---|"]
    rows += [f"| {r.fault} | {r.expected} | {r.observed} | {r.verdict} |" for r in results]
    n_fail = sum(not r.ok for r in results)
    rows.append(f"\n{len(results) - n_fail} of {len(results)} faults handled as expected")
    return "\n".join(rows)
