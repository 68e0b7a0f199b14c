#!/usr/bin/env bash
# One prepared device check (about 10 minutes on one GPU): the e3nn field's cuequivariance backend
# against the e3nn path on CUDA, then EGNN vs e3nn (vs cueq) field costs at LJ13/alanine/LJ55 sizes.
# Run from the repository root on a machine with CUDA, torch, e3nn and torchdiffeq. cuequivariance
# wheels (cuequivariance, cuequivariance-torch) may come in .whl/ (the device tool carries them);
# its GPU kernels (cuequivariance-ops-torch-cu13, 70 MB with its ops package) do not fit the
# carry limit, so the cueq rows use its pure-torch path. Results go under $OUT (default runs/gpu_check).
# The divergence benchmark and its results: scripts/gpu_div_check.sh, docs/results.md.
set -uo pipefail
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
exec > >(tee "$OUT/gpu_check.log") 2>&1
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, e3nn; print('torch', torch.__version__, 'e3nn', e3nn.__version__, torch.cuda.get_device_name(0))"

echo "== cueq backend equals the e3nn path on CUDA (float64, same weights)"
timeout 60 $PY - <<'PY'
import torch
from eqflow.nn import E3NNField, cueq_available
print("cuequivariance available:", cueq_available())
if cueq_available():
    torch.manual_seed(0)
    dev = "cuda"
    a = E3NNField(dim=3, n_node_features=4).double().to(dev)
    b = E3NNField(dim=3, n_node_features=4, backend="cueq").double().to(dev)
    b.load_state_dict(a.state_dict())
    x = torch.randn(8, 22, 3, dtype=torch.float64, device=dev, requires_grad=True)
    h = torch.nn.functional.one_hot(torch.randint(0, 4, (22,), device=dev), 4).double()[None].expand(8, -1, -1)
    t = torch.rand(8, dtype=torch.float64, device=dev)
    va, vb = a(t, x, h), b(t, x, h)
    (ga,) = torch.autograd.grad(va.pow(2).sum(), x)
    (gb,) = torch.autograd.grad(vb.pow(2).sum(), x)
    print(f"max |v_e3nn - v_cueq| = {float((va - vb).abs().max()):.2e}, grads {float((ga - gb).abs().max()):.2e}")
    assert float((va - vb).abs().max()) < 1e-9 and float((ga - gb).abs().max()) < 1e-8
    print("cueq == e3nn on CUDA: ok")
PY

echo "== field costs on the GPU (batch 64; ms are medians)"
timeout 120 $PY scripts/bench_fields.py --device cuda --systems lj13 ala2 lj55 --reps 5 \
  $($PY -c "from eqflow.nn import cueq_available; print('--cueq' if cueq_available() else '')")
echo "== LJ55 data-free on the GPU: pair field with environment channels, 5 minutes (issue 10, item 4)"
# The CPU runs (docs/results.md, "Environment channels") make ~200-400 steps an hour here; this shows
# how far the same config gets per minute on a GPU at a 4x larger batch, evaluated exactly.
timeout 540 $PY scripts/train_eq.py --config configs/lj55_pairwise.yaml --device cuda --out "$OUT/lj55_env8" \
  --set field.n_env=8 train.batch_size=256 train.budget_minutes=5 train.ema_decay=0.99 eval.n_steps=32 \
  eval.batch_size=1000 | grep -v "it/s"
echo "== done"
