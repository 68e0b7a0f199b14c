"""torchrun data parallelism on CPU (gloo, 2 ranks): identical replicas, rank-0 files, resume across world sizes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from eqflow.fault_check import TINY  # the tiny DW4 run the fault checks use too
from eqflow.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(n, *args, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def train(tmp_path, out, steps, ranks, *extra):
    d = json.loads(json.dumps(TINY))
    d["train"]["steps"] = steps
    cfg = tmp_path / f"cfg{steps}.yaml"
    cfg.write_text(yaml.safe_dump(d))
    args = [ROOT / "scripts" / "train_eq.py", "--config", cfg, "--out", out, "--no-progress", "--no-eval", *extra]
    if ranks == 1:
        r = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return r
    return torchrun(ranks, *args)


def test_two_ranks_hold_identical_parameters_after_every_step(tmp_path):
    out = tmp_path / "result.json"
    torchrun(2, ROOT / "tests" / "training" / "_distributed_worker.py", out)
    res = json.loads(out.read_text())
    assert res["world"] == 2
    assert res["max_param_diff"] == [0.0] * 4
    assert res["ranks_draw_different_samples"]
    assert res["ess_gathered"] == pytest.approx(res["ess_single"], rel=0, abs=1e-15)


def test_rank0_alone_writes_and_checkpoints_resume_across_world_sizes(tmp_path):
    run = tmp_path / "run"
    train(tmp_path, run, 3, 2)
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3]  # one row per step: only rank 0 writes
    state = read_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 3 and "rng" not in state  # nothing in it depends on the number of ranks
    train(tmp_path, run, 5, 1, "--resume")  # a 2-rank checkpoint on 1 rank
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 5
    train(tmp_path, run, 7, 2, "--resume")  # a 1-rank checkpoint on 2 ranks
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 7
    assert [json.loads(line)["step"] for line in open(run / "metrics.jsonl")] == list(range(1, 8))


def test_buffer_is_sharded_per_rank_and_rank0s_buffer_resumes(tmp_path):
    d = json.loads(json.dumps(TINY))
    d["train"].update(steps=3, kl_weight=0.5, fm_weight=1.0)
    d["fm"] = {"batch_size": 16}
    d["buffer"] = {"capacity": 100, "refresh_every": 2, "refresh_samples": 16}
    d["anneal"] = {"temperatures": [2.0, 1.0], "steps_per_rung": 2}
    cfg = tmp_path / "buffer.yaml"
    cfg.write_text(yaml.safe_dump(d))
    run = tmp_path / "run"
    args = [ROOT / "scripts" / "train_eq.py", "--config", cfg, "--out", run, "--no-progress", "--no-eval"]
    torchrun(2, *args)
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    # Refreshes before steps 0 and 2 (16 samples over both ranks) and 3 reverse-KL batches of 16 in all.
    assert [r["step"] for r in rows if "buffer_ess" in r] == [1, 3]
    assert rows[-1]["energy_evals"] == 2 * 16 + 3 * 16
    assert [r["temperature"] for r in rows] == [2.0, 2.0, 1.0]
    state = read_checkpoint(run / "checkpoint.pt")
    assert state["buffer"]["size"] == 2 * 8 and state["temperature"] == 1.0  # rank 0's share of each refresh
    d["train"]["steps"] = 5
    cfg.write_text(yaml.safe_dump(d))
    r = subprocess.run([sys.executable, *map(str, args), "--resume"], capture_output=True, text=True, env=ENV,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    state = read_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 5 and state["buffer"]["size"] == 16 + 16  # one more refresh (step 4), one rank


def test_mala_refined_buffer_under_two_ranks(tmp_path):
    """Each rank refines its own share; the adapted step size is averaged so every rank (and the
    checkpoint) holds the same one."""
    d = json.loads(json.dumps(TINY))
    d["train"].update(steps=3, kl_weight=0.5, iwml_weight=1.0, ml_batch_size=16)
    d["buffer"] = {"capacity": 100, "refresh_every": 2, "refresh_samples": 16, "tempering": 0.0,
                   "mcmc_steps": 10, "mcmc_step_size": 0.05, "mcmc_max_drift": 0.5}
    cfg = tmp_path / "mala.yaml"
    cfg.write_text(yaml.safe_dump(d))
    run = tmp_path / "run"
    torchrun(2, ROOT / "scripts" / "train_eq.py", "--config", cfg, "--out", run, "--no-progress", "--no-eval")
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    refreshes = [r for r in rows if "mcmc_acceptance" in r]
    assert [r["step"] for r in refreshes] == [1, 3]
    assert all(r["mcmc_energy_after"] < r["mcmc_energy_before"] for r in refreshes)
    state = read_checkpoint(run / "checkpoint.pt")
    assert state["mcmc_step_size"] == pytest.approx(refreshes[-1]["mcmc_step_size"]) and state["mcmc_step_size"] != 0.05


def test_scaling_table_efficiency():
    from eqflow.benchmark_scaling import scaling_table
    rows = [{"world": 1, "system": "dw4", "batch": 256, "seconds_per_step": 1.0, "samples_per_second": 100.0},
            {"world": 2, "system": "dw4", "batch": 256, "seconds_per_step": 0.625, "samples_per_second": 160.0}]
    table = scaling_table(rows)
    assert "80%" in table.splitlines()[-1] and table.splitlines()[-1].count("80%") == 2


def test_ranks_other_than_0_wait_for_the_reference_instead_of_generating_it(tmp_path):
    """Only rank 0 runs the MCMC for a missing 'auto' reference; the others read its file when it
    appears (polling, not a barrier: LJ55's MCMC outlasts the process group's timeout)."""
    import threading

    import numpy as np

    from eqflow.config import apply_overrides, load_config
    from eqflow.distributed import wait_for_path
    from eqflow.distributions.reference import reference_path, save_reference
    from eqflow.training import resolve_reference

    with pytest.raises(TimeoutError, match="rank 0"):
        wait_for_path(tmp_path / "never.npz", timeout_s=0.2, poll_s=0.05)
    cfg = apply_overrides(load_config(ROOT / "configs" / "dw4.yaml"),
                          ["target.reference=auto", f"target.reference_cache={tmp_path}"])
    path = reference_path("dw4", tmp_path)
    rng = np.random.default_rng(0)
    writer = threading.Timer(0.3, save_reference, (path, rng.normal(size=(50, 4, 2)), rng.normal(size=50)))
    writer.start()
    train_ref, test_ref = resolve_reference(cfg, progress=False, generate=False)  # would run the MCMC if it generated
    writer.join()
    assert len(train_ref) + len(test_ref) == 50
