#!/usr/bin/env bash
# One prepared device check (about 8 minutes on one GPU): Hutchinson vs exact divergence timings
# on the GPU, then a short data-free LJ55 run with its evaluation. Results go under $OUT (default
# runs/gpu_check). Usage, from the repository root on a machine with CUDA and eqflow's dependencies:
#     bash scripts/gpu_check.sh
set -uo pipefail
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
exec > >(tee "$OUT/gpu_check.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, e3nn, torchdiffeq; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0))"

echo "== smoke: LJ55, 2 steps on cuda"
timeout 90 $PY scripts/train_eq.py --config configs/lj55.yaml --device cuda --out /tmp/lj55_smoke \
  --set train.steps=2 eval.n_samples=64 eval.nll_samples=16 eval.solver_check=16 2>&1 | tail -4

echo "== divergence benchmark on the GPU (EGNN hidden 32, 3 layers, rk4, adjoint for revkl)"
timeout 120 $PY scripts/bench_divergence.py --device cuda --systems 22x3 55x3 --batches 256 --steps 4 \
  --exact-micro-batch 256 --timeout 40

echo "== LJ55 data-free, 3 minutes of training on the GPU"
timeout 240 $PY scripts/train_eq.py --config configs/lj55.yaml --device cuda --out "$OUT/lj55" \
  --set train.budget_minutes=3 train.batch_size=256 eval.n_samples=2000 eval.batch_size=1000 \
  eval.nll_samples=500 eval.n_steps=16 2>&1 | grep -v "it/s"

echo "== LJ55 exact-divergence evaluation (500 samples, rk4 8 steps)"
timeout 60 $PY scripts/evaluate.py "$OUT/lj55" --divergence exact --n 500 --n-steps 8 --out /tmp/lj55_exact \
  2>&1 | grep -v "it/s"
echo "== done"
