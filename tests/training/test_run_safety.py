"""Nothing lost, nothing wrong: run folders, checkpoint verification, signals, one-line CLI errors."""
import json
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from eqflow import load_checkpoint
from eqflow.builders import build_target
from eqflow.fault_check import TINY, tiny_config as tiny, tiny_trainer as trainer  # shared with the fault checks
from eqflow.checkpoint import previous_path, read_checkpoint, save_checkpoint_atomic
from eqflow.config import ConfigError, config_from_dict
from eqflow.errors import CheckpointError, RunFolderError
from eqflow.training import TrainingInterrupted, run_training

ROOT = Path(__file__).resolve().parents[2]


def losses(path):
    return [json.loads(line)["loss"] for line in open(path) if "loss" in line]


# -- run folders --------------------------------------------------------------------------------
def test_fresh_run_refuses_a_folder_with_a_run(tmp_path):
    run_training(tiny(steps=1), tmp_path, progress=False, evaluate=False)
    with pytest.raises(RunFolderError, match="already holds a run.*--resume.*--overwrite"):
        run_training(tiny(steps=1), tmp_path, progress=False, evaluate=False)
    with pytest.raises(RunFolderError, match="already holds a run"):
        trainer(tiny(steps=1), tmp_path).train()  # the library refuses too, not only the script
    summary = run_training(tiny(steps=2), tmp_path, progress=False, evaluate=False, overwrite=True)
    assert summary["steps"] == 2
    assert [r["step"] for r in map(json.loads, open(tmp_path / "metrics.jsonl"))] == [1, 2]


def test_resume_without_checkpoint_is_refused(tmp_path):
    with pytest.raises(RunFolderError, match="no checkpoint"):
        run_training(tiny(), tmp_path, resume=True, progress=False, evaluate=False)


def test_corrupted_checkpoint_is_refused_in_one_line(tmp_path):
    tr = trainer(tiny(steps=2), tmp_path)
    tr.train()
    data = bytearray(tr.checkpoint_path.read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.choice(np.arange(len(data) // 4, len(data) // 2), 64, replace=False):
        data[i] ^= 0xFF  # 64 flipped bytes inside the records
    tr.checkpoint_path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path)
    assert "\n" not in str(err.value) and "checkpoint.pt" in str(err.value)


def test_resume_falls_back_to_previous_checkpoint(tmp_path):
    tr = trainer(tiny(steps=4, checkpoint_every=2), tmp_path)
    tr.train()  # saves at 2, 4 (and at the end: 4 again), the one before is kept as .prev
    assert previous_path(tr.checkpoint_path).exists()
    tr.checkpoint_path.write_bytes(b"garbage")
    again = trainer(tiny(steps=6, checkpoint_every=2), tmp_path)
    with pytest.warns(RuntimeWarning, match="resuming from the previous checkpoint"):
        again.load()
    assert again.step == 4


def test_unsafe_pickle_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "eqflow-checkpoint-2", "model": {}, "evil": Payload()}, path)
    with pytest.raises(CheckpointError, match="unsafe to load"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_leftover_temporary_files_are_removed_and_truncated_metrics_tolerated(tmp_path):
    tr = trainer(tiny(steps=3, checkpoint_every=3), tmp_path)
    tr.train()
    dead = tmp_path / ".checkpoint.pt.tmp-999999999-abc123.pt"  # from a write killed with kill -9
    dead.write_bytes(b"partial")
    with open(tr.metrics_path, "a") as fh:
        fh.write('{"step": 4, "loss": 1.2')  # a line cut short
    resumed = trainer(tiny(steps=5, checkpoint_every=3), tmp_path)
    assert not dead.exists()
    resumed.load()
    resumed.train()
    assert [json.loads(line)["step"] for line in open(tr.metrics_path)] == [1, 2, 3, 4, 5]


def test_atomic_save_keeps_previous(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint_atomic({"a": torch.tensor(1)}, path)
    save_checkpoint_atomic({"a": torch.tensor(2)}, path)
    assert int(read_checkpoint(path)["a"]) == 2 and int(read_checkpoint(previous_path(path))["a"]) == 1


# -- signals -------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_step_then_resume_equals_uninterrupted_run(tmp_path, signum):
    full = trainer(tiny(steps=6), tmp_path / "full")
    full.train()
    reference = losses(full.metrics_path)

    cfg = tiny(steps=6)
    target = build_target(cfg)
    calls = {"n": 0}
    energy = target._energy

    def energy_then_signal(x):
        calls["n"] += 1
        if calls["n"] == 4:  # inside step 4, after its sampling solve: the step is half done
            os.kill(os.getpid(), signum)
        return energy(x)

    target._energy = energy_then_signal
    part = trainer(cfg, tmp_path / "part", target=target)
    with pytest.raises(TrainingInterrupted) as stop:
        part.train()
    assert stop.value.step == 3 and str(stop.value) == "checkpoint saved at step 3, resume with --resume"
    assert read_checkpoint(part.checkpoint_path)["step"] == 3
    target._energy = energy
    resumed = trainer(cfg, tmp_path / "part")
    resumed.load()
    resumed.train()
    np.testing.assert_allclose(losses(resumed.metrics_path), reference, rtol=0, atol=1e-6)


def test_sigterm_to_train_script_saves_and_prints_one_line(tmp_path):
    d = json.loads(json.dumps(TINY))
    d["train"].update(steps=100000, checkpoint_every=100000)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(d))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train_eq.py"), "--config", str(cfg_path),
                             "--out", str(out), "--no-progress"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    t0 = time.time()
    while time.time() - t0 < 120 and not (out / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    step = read_checkpoint(out / "checkpoint.pt")["step"]
    assert step >= 1 and lines[-1] == f"checkpoint saved at step {step}, resume with --resume"


# -- one-line errors on the command line ---------------------------------------------------------
def _train_cli(argv, capsys):
    old = sys.argv
    sys.argv = ["train_eq.py", *argv]
    try:
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(ROOT / "scripts" / "train_eq.py"), run_name="__main__")
    finally:
        sys.argv = old
    err = capsys.readouterr().err
    return exit_.value.code, err


@pytest.mark.parametrize("extra, message", [
    (["--set", "target.name=nope"], "unknown target 'nope'"),
    (["--set", "target.kwargs.bogus=1"], "bad arguments for target 'dw4'"),
    (["--device", "cuda:7"], "not available"),
    (["--set", "target.reference=/nonexistent/ref.npz"], "reference file not found"),
    (["--set", "train.budget_minutes=0"], "train.budget_minutes' must be positive"),
    (["--set", "train.warmup_steps=-1"], "train.warmup_steps' must be >= 0"),
    (["--set", "target.energy_cut=-5"], "target.energy_cut' must be >= 0"),
    (["--resume"], "no checkpoint"),
])
def test_user_errors_are_one_line(tmp_path, capsys, extra, message):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY))
    code, err = _train_cli(["--config", str(cfg_path), "--out", str(tmp_path / "run"), "--no-progress",
                            "--no-eval", *extra], capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_changed_config_on_resume_is_one_line(tmp_path, capsys):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY))
    run_training(config_from_dict(TINY), tmp_path / "run", progress=False, evaluate=False)
    code, err = _train_cli(["--config", str(cfg_path), "--out", str(tmp_path / "run"), "--no-progress",
                            "--resume", "--set", "field.hidden=16"], capsys)
    assert code == 2 and "section 'field' differs" in err and len(err.strip().splitlines()) == 1


def test_config_rejects_bad_budgets():
    for key, value in [("budget_minutes", -1.0), ("warmup_steps", -2), ("skip_warning_fraction", 2.0)]:
        d = json.loads(json.dumps(TINY))
        d["train"][key] = value
        with pytest.raises(ConfigError, match=key):
            config_from_dict(d)
