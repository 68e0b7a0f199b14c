import io
import math

import pytest
import torch

from eqflow.distributions import CoMFreeGaussian
from eqflow.geometry import remove_mean
from eqflow.training.buffer import ReplayBuffer
from eqflow.training.flow_matching import flow_matching_loss
from eqflow.training.weighted import (self_normalized, weighted_flow_matching_loss,
                                      weighted_maximum_likelihood_loss)

U = [1.0, 2.0, 0.5, 3.0]


def filled(capacity=4, **kwargs):
    buf = ReplayBuffer(capacity, **kwargs)
    x = torch.arange(4, dtype=torch.float64)[:, None, None].expand(4, 2, 1) * torch.tensor([[[1.0], [-1.0]]])
    buf.add(x, torch.zeros(4, dtype=torch.float64), torch.tensor(U, dtype=torch.float64))
    return buf


def hand_ess(log_w):
    w = [math.exp(v) for v in log_w]
    return sum(w) ** 2 / (len(w) * sum(v * v for v in w))


def test_weights_and_ess_by_hand():
    buf = filled()
    assert buf.log_weights().tolist() == [-1.0, -2.0, -0.5, -3.0]   # -u - log q with log q = 0
    assert buf.ess() == pytest.approx(hand_ess([-1.0, -2.0, -0.5, -3.0]), rel=1e-12)
    st = buf.stats()
    w = [math.exp(-u) for u in U]
    assert st["max_weight_raw"] == pytest.approx(max(w) / sum(w), rel=1e-12)
    assert st["ess"] == st["ess_raw"] and st["n_clipped"] == 0 and st["size"] == 4


def test_clipping_and_tempering_by_hand():
    # Sorted log w: -3, -2, -1, -0.5; the linear-interpolated median is -1.5.
    buf = filled(clip_quantile=0.5)
    assert buf.log_weights().tolist() == [-1.5, -2.0, -1.5, -3.0]
    st = buf.stats()
    assert st["n_clipped"] == 2
    assert st["ess_raw"] == pytest.approx(hand_ess([-1.0, -2.0, -0.5, -3.0]), rel=1e-12)
    assert st["ess"] == pytest.approx(hand_ess([-1.5, -2.0, -1.5, -3.0]), rel=1e-12)
    assert st["ess"] > st["ess_raw"]
    # max - c: cap at -0.5 - 0.75 = -1.25.
    assert filled(clip_log_ratio=0.75).log_weights().tolist() == [-1.25, -2.0, -1.25, -3.0]
    # Both: the lower cap wins.
    assert filled(clip_quantile=0.5, clip_log_ratio=0.75).log_weights().tolist() == [-1.5, -2.0, -1.5, -3.0]
    # Tempering after clipping: w^β.
    buf = filled(clip_log_ratio=0.75, tempering=0.5)
    assert buf.log_weights().tolist() == [-0.625, -1.0, -0.625, -1.5]
    assert buf.log_weights(raw=True).tolist() == [-1.0, -2.0, -0.5, -3.0]
    assert filled(tempering=0.0).ess() == pytest.approx(1.0)


def test_fifo_insertion_and_eviction():
    buf = ReplayBuffer(3)

    def add(ids):
        ids = torch.tensor(ids, dtype=torch.float64)
        return buf.add(ids[:, None, None].expand(-1, 2, 3).clone(), -ids, ids)

    add([0, 1])
    assert buf.data()["u"].tolist() == [0, 1] and len(buf) == 2
    add([2, 3])
    assert buf.data()["u"].tolist() == [1, 2, 3]          # 0, the oldest, was evicted
    assert buf.data()["log_q"].tolist() == [-1, -2, -3]
    add([4, 5, 6, 7, 8])
    assert buf.data()["u"].tolist() == [6, 7, 8] and len(buf) == 3
    # Non-finite energies or densities are not stored.
    ids = torch.tensor([9.0, 10.0, 11.0])
    dropped = buf.add(ids[:, None, None].expand(-1, 2, 3).clone(), torch.tensor([0.0, float("nan"), 0.0]),
                      torch.tensor([9.0, 10.0, float("inf")]))
    assert dropped == 2 and buf.data()["u"].tolist() == [7, 8, 9]
    with pytest.raises(ValueError, match="holds"):
        buf.add(torch.zeros(1, 3, 3), torch.zeros(1), torch.zeros(1))


def test_resampling_follows_the_weights():
    buf = ReplayBuffer(3)
    x = torch.arange(3, dtype=torch.float64)[:, None, None].expand(3, 2, 1).clone()
    probs = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    buf.add(x, torch.zeros(3, dtype=torch.float64), -probs.log())
    xs, idx = buf.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(xs[:, 0, 0], idx.double())
    freq = torch.bincount(idx, minlength=3).double() / 20_000
    assert torch.allclose(freq, probs, atol=0.015)
    _, idx = buf.sample(20_000, generator=torch.Generator().manual_seed(0), resample=False)
    assert torch.allclose(torch.bincount(idx, minlength=3).double() / 20_000, torch.full((3,), 1 / 3, dtype=torch.float64),
                          atol=0.015)


def test_state_dict_round_trip_gives_identical_draws():
    gen = torch.Generator().manual_seed(1)
    buf = ReplayBuffer(5, temperature=300.0, clip_quantile=0.9)
    for _ in range(3):  # wraps around the ring
        buf.add(remove_mean(torch.randn(2, 4, 3, generator=gen)), torch.randn(2, generator=gen),
                torch.randn(2, generator=gen))
    blob = io.BytesIO()
    torch.save(buf.state_dict(), blob)
    blob.seek(0)
    other = ReplayBuffer(5, clip_quantile=0.9)
    other.load_state_dict(torch.load(blob, weights_only=True))
    assert other.temperature == 300.0 and len(other) == 5
    a = buf.sample(50, generator=torch.Generator().manual_seed(2))
    b = other.sample(50, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # Insertion continues where it left off.
    new = remove_mean(torch.randn(1, 4, 3, generator=gen))
    for bb in (buf, other):
        bb.add(new, torch.zeros(1), torch.zeros(1))
    for k in ("x", "log_q", "u"):
        assert torch.equal(buf.data()[k], other.data()[k])
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(6).load_state_dict(buf.state_dict())


def test_temperature_rescaling_by_hand():
    buf = ReplayBuffer(4, temperature=300.0)
    buf.add(torch.zeros(2, 2, 3), torch.zeros(2), torch.tensor([2.0, 4.0]))
    buf.reweight_temperature(600.0)
    assert buf.temperature == 600.0 and buf.data()["u"].tolist() == [1.0, 2.0]   # u = E/kT, E fixed
    # Energies computed at another temperature are moved to the buffer's on insertion.
    buf.add(torch.zeros(1, 2, 3), torch.zeros(1), torch.tensor([3.0]), temperature=400.0)
    assert buf.data()["u"].tolist() == [1.0, 2.0, 2.0]


def test_weighted_maximum_likelihood_by_hand(float64):
    base = CoMFreeGaussian(3, 2, scale=1.5)
    x = remove_mean(torch.randn(3, 3, 2, generator=torch.Generator().manual_seed(3)))
    log_w = torch.tensor([0.0, math.log(3.0), -float("inf")])
    loss, st = weighted_maximum_likelihood_loss(base, x, log_w)
    # w = (1/4, 3/4, 0); log N_V(x; σ) = -|x|²/(2σ²) - (N-1)·dim/2 · log(2πσ²).
    lq = [-(xi.pow(2).sum().item()) / (2 * 1.5**2) - 2 * math.log(2 * math.pi * 1.5**2) for xi in x]
    assert loss.item() == pytest.approx(-(0.25 * lq[0] + 0.75 * lq[1]), rel=1e-12)
    assert st["ess"] == pytest.approx(1.0 / (3 * (0.25**2 + 0.75**2)))
    assert torch.allclose(self_normalized(log_w), torch.tensor([0.25, 0.75, 0.0]))


def test_weighted_flow_matching_equals_weighted_mean(float64):
    def zero_field(t, x, h=None):
        return torch.zeros_like(x)

    x0 = remove_mean(torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(4)))
    x1 = remove_mean(torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(5)))
    t = torch.tensor([0.2, 0.5, 0.9])
    per = (x1 - x0).pow(2).sum(-1).mean(-1)
    loss, _ = weighted_flow_matching_loss(zero_field, x0, x1, torch.tensor([math.log(2.0), 0.0, -float("inf")]), t=t)
    assert loss.item() == pytest.approx((2 * per[0] + per[1]).item() / 3, rel=1e-12)
    ref, _ = flow_matching_loss(zero_field, x0, x1, t=t, weights=torch.tensor([2.0, 1.0, 0.0]))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
