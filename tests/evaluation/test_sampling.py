"""Weighted sample sets: chunked draws, shard files merged by rank 0, and torchrun sampling and
evaluation (CPU, gloo, 2 ranks) giving the numbers one process gives on the same samples."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eqflow import Generator, load_checkpoint
from eqflow.config import apply_overrides, config_from_dict
from eqflow.distributions.reference import save_reference
from eqflow.errors import EqflowError
from eqflow.evaluation.report import evaluate_generator
from eqflow.evaluation.sampling import (PER_SAMPLE_KEYS, draw_samples, load_samples, merge_sample_sets, merge_shards,
                                        sample_to_file, save_samples, shard_path, shard_seed)
from eqflow.fault_check import TINY, tiny_trainer
from eqflow.geometry import remove_mean
from eqflow.training import resolve_reference

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
N, SEED = 75, 3  # 75 over 2 ranks: 38 + 37, each more than one batch of 32


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny DW4 run (2 steps) and a small reference file for it."""
    tmp = tmp_path_factory.mktemp("sampling")
    d = json.loads(json.dumps(TINY))
    d["train"]["steps"] = 2
    d["eval"]["nll_samples"] = 10
    tiny_trainer(config_from_dict(d), tmp / "run").train()
    gen = load_checkpoint(tmp / "run")
    x = remove_mean(1.5 * torch.randn(40, 4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    save_reference(tmp / "ref.npz", x, gen.target.energy(x), {"system": "dw4"})
    return tmp


def test_single_process_file_is_the_seeded_draw_whatever_the_chunks(run, tmp_path):
    gen = load_checkpoint(run / "run")
    s = sample_to_file(gen, 70, tmp_path / "s.npz", seed=SEED, chunk_size=32, log=lambda line: None)
    torch.manual_seed(SEED)
    x, log_q = gen.sample(70)  # what scripts/sample.py --seed 3 draws in one process
    u = gen.target.energy(x).detach()
    f = load_samples(tmp_path / "s.npz")
    assert set(f) == set(PER_SAMPLE_KEYS)
    for k, v in {"x": x, "log_q": log_q, "u": u, "log_w": -u - log_q}.items():
        assert torch.equal(f[k], v) and torch.equal(s[k], v), k
    torch.manual_seed(SEED)
    assert torch.equal(draw_samples(gen, 70, chunk_size=1000)["x"], x)  # one chunk: the same stream


def test_merge_shards_concatenates_in_rank_order_and_combines_fold_stats(tmp_path):
    out = tmp_path / "m.npz"
    parts = []
    for r, (n, d) in enumerate([(4, 0.5), (3, 1 / 3)]):
        part = {"x": torch.randn(n, 3, 3), "log_q": torch.randn(n), "u": torch.randn(n), "log_w": torch.randn(n),
                "d_fraction": d, "stereo_mismatch_fraction": 0.0, "folded": True}
        save_samples(part, shard_path(out, r, 2))
        parts.append(part)
    lines = []
    merged = merge_shards(out, 2, keep_shards=False, log=lines.append)
    assert lines == [f"wrote 7 samples to {out} (merged from 2 ranks)"]
    assert not shard_path(out, 0, 2).exists() and not shard_path(out, 1, 2).exists()
    f = load_samples(out)
    for k in PER_SAMPLE_KEYS:
        assert torch.equal(f[k], torch.cat([p[k] for p in parts])) and torch.equal(merged[k], f[k])
    assert f["d_fraction"] == 3 / 7 and f["stereo_mismatch_fraction"] == 0.0 and f["folded"] is True
    assert f["shard_sizes"].tolist() == [4, 3]
    assert merge_sample_sets([parts[0]])["d_fraction"] == 0.5


def test_load_samples_names_a_file_that_is_not_a_samples_file(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 4, 2)), log_q=np.zeros(2))
    with pytest.raises(EqflowError, match="no u, log_w"):
        load_samples(tmp_path / "bad.npz")


def torchrun(*args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_torchrun_sample_writes_rank_shards_and_one_merged_file(run, tmp_path):
    out = tmp_path / "s.npz"
    r = torchrun(ROOT / "scripts" / "sample.py", run / "run", "-n", N, "--seed", SEED, "--out", out, "--keep-shards")
    wrote = [line for line in r.stdout.splitlines() if line.startswith("wrote")]
    assert wrote == [f"wrote 38 samples to {shard_path(out, 0, 2)}", f"wrote 37 samples to {shard_path(out, 1, 2)}",
                     f"wrote {N} samples to {out} (merged from 2 ranks)"]  # rank 0 alone prints
    merged = load_samples(out)
    assert merged["shard_sizes"].tolist() == [38, 37] and len(merged["x"]) == N
    gen = load_checkpoint(run / "run")
    for r_, k in enumerate([38, 37]):  # each shard is its rank's own reproducible stream
        shard = load_samples(shard_path(out, r_, 2))
        torch.manual_seed(shard_seed(SEED, r_, 2))
        again = draw_samples(gen, k)
        for key in PER_SAMPLE_KEYS:
            assert torch.equal(shard[key], again[key])
            assert torch.equal(merged[key][38 * r_:38 * r_ + k], shard[key])
    assert not torch.equal(merged["x"][:37], merged["x"][38:])


def test_torchrun_evaluate_gathers_before_metrics_same_numbers_as_one_process(run, tmp_path):
    # 2 ranks draw 38 + 37 samples and score 4 + 4 reference points; the same samples (sample.py's
    # streams, rebuilt here) scored by one process give the same ESS, energies, distances and NLL.
    torchrun(ROOT / "scripts" / "evaluate.py", run / "run", "--n-samples", N, "--seed", SEED,
             "--reference", run / "ref.npz", "--out", tmp_path / "e")
    dist = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    gen = load_checkpoint(run / "run")
    gen = Generator(gen.model, gen.target, apply_overrides(gen.config, [f"target.reference={run / 'ref.npz'}"]))
    _, test = resolve_reference(gen.config, gen.target)
    parts = []
    for r_, k in enumerate([38, 37]):
        torch.manual_seed(shard_seed(SEED, r_, 2))
        parts.append(draw_samples(gen, k))
    one = evaluate_generator(gen, test, samples=merge_sample_sets(parts), plots=False)
    assert dist["n_samples"] == N and "nll" in dist and "energy_w1_reweighted" in dist
    assert dist["ess"] == one["ess"]
    assert set(dist) == set(one)
    for k, v in one.items():
        assert dist[k] == (pytest.approx(v, rel=1e-6) if isinstance(v, float) else v), k
