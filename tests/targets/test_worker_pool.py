"""OpenMM worker pool integrity: a call returns its own energies or raises, and the pool recovers."""
import os
import signal
import time

import pytest
import torch

from eqflow.errors import WorkerError
from eqflow.targets.molecular import alanine_dipeptide
from eqflow.targets.openmm_bridge import OpenMMEnergy, _Worker


@pytest.fixture(scope="module")
def mol():
    m = alanine_dipeptide("vacuum", platform="Reference")
    yield m
    m.close()


def _configs(mol, n, seed):
    g = torch.Generator().manual_seed(seed)
    return mol.positions[None] + 0.01 * torch.randn((n, 22, 3), dtype=torch.float64, generator=g)


def _in_process(mol, x):
    """The reference: an in-process OpenMM context (mol.energy has no workers)."""
    return mol.energy(x)


def test_worker_killed_while_idle_gives_clear_error_then_correct_energy(mol):
    a, b = _configs(mol, 4, 0), _configs(mol, 1, 1)
    with OpenMMEnergy(mol.system, 300.0, n_workers=2, timeout=30) as e:
        torch.testing.assert_close(e(a), _in_process(mol, a), rtol=0, atol=0)
        os.kill(e._pool[0].pid, signal.SIGKILL)
        e._pool[0].proc.wait()
        with pytest.raises(WorkerError, match=r"worker pid \d+"):
            e(b)
        assert e._pool is None  # closed; the next call starts afresh
        # The bug this guards against: the second call returned the previous call's energy.
        torch.testing.assert_close(e(b), _in_process(mol, b), rtol=0, atol=0)


def test_keyboard_interrupt_mid_batch_leaves_next_call_correct(mol, monkeypatch):
    a, b = _configs(mol, 6, 2), _configs(mol, 3, 3)
    with OpenMMEnergy(mol.system, 300.0, n_workers=2, timeout=30) as e:
        e(a)  # pool up
        real_receive = _Worker.receive
        calls = {"n": 0}

        def interrupted(self, request_id, timeout):
            calls["n"] += 1
            if calls["n"] == 1:  # the first reply of the batch is read, then the user presses stop
                real_receive(self, request_id, timeout)
                raise KeyboardInterrupt
            return real_receive(self, request_id, timeout)

        monkeypatch.setattr(_Worker, "receive", interrupted)
        with pytest.raises(KeyboardInterrupt):
            e(a)
        assert e._pool is None
        monkeypatch.setattr(_Worker, "receive", real_receive)
        torch.testing.assert_close(e(b), _in_process(mol, b), rtol=0, atol=0)
        torch.testing.assert_close(e(a), _in_process(mol, a), rtol=0, atol=0)


def test_stopped_worker_raises_within_timeout(mol):
    a = _configs(mol, 4, 4)
    with OpenMMEnergy(mol.system, 300.0, n_workers=2, timeout=2.0) as e:
        e(a)
        pid = e._pool[1].pid
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match=rf"pid {pid} did not reply within 2 s"):
            e(a)
        assert time.monotonic() - t0 < 10
        # The stopped worker was killed, not left behind.
        with pytest.raises(ProcessLookupError):
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
        torch.testing.assert_close(e(a), _in_process(mol, a), rtol=0, atol=0)


def test_stale_reply_is_never_taken_for_a_new_one(mol):
    a, b = _configs(mol, 2, 5), _configs(mol, 2, 6)
    with OpenMMEnergy(mol.system, 300.0, n_workers=1, timeout=30) as e:
        e(a)
        w = e._pool[0]
        w.send(999, "eval", a.numpy(), 5.0)  # a reply nobody reads: the pipe is out of step
        with pytest.raises(WorkerError, match="answered request 999"):
            e(b)
        torch.testing.assert_close(e(b), _in_process(mol, b), rtol=0, atol=0)


def test_timeout_must_be_positive(mol):
    with pytest.raises(ValueError, match="timeout"):
        OpenMMEnergy(mol.system, 300.0, n_workers=1, timeout=0)
