#!/usr/bin/env bash
# One prepared device check (about 8 minutes) of the exact-divergence modes: on the GPU, loop vs
# batched vs Hutchinson for the default systems and exact log-densities of 10,000 alanine points;
# at the same time, on idle CPU cores of the same machine, one single-threaded job per measurement
# (loop vs batched vs Hutchinson at 22x3, torch.compile, small systems, alanine log-densities).
# Results under $OUT (default runs/gpu_div_check). Usage, from the repository root:
#     bash scripts/gpu_div_check.sh
set -uo pipefail
OUT=${OUT:-runs/gpu_div_check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
PDB=eqflow/data/alanine-dipeptide-nowater.pdb
BENCH="$PY scripts/bench_divergence.py"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PY -c "import torch, os; print('torch', torch.__version__, 'cpus', os.cpu_count())"

cpu() { OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 timeout 420 "$@"; }
cpu $BENCH --systems 22x3 --batches 256 --steps 1 --tasks sample --timeout 300 >"$OUT/cpu_22x3.txt" 2>&1 &
cpu $BENCH --systems 22x3 --batches 256 --steps 1 --tasks sample --modes exact-loop+compile hutchinson+compile \
  --timeout 400 >"$OUT/cpu_compile.txt" 2>&1 &
cpu $BENCH --systems 4x2 13x3 --batches 64 256 --steps 1 --timeout 200 >"$OUT/cpu_small.txt" 2>&1 &
cpu $PY scripts/bench_logprob.py --config configs/ala2_implicit.yaml --pdb $PDB --n 250 >"$OUT/cpu_ala2.txt" 2>&1 &

echo "== GPU: sample solves, rk4 4 steps, batch 256"
timeout 240 $BENCH --device cuda --systems 4x2 13x3 22x3 55x3 --batches 256 --steps 4 --tasks sample --timeout 60
echo "== GPU: batched with all 66 coordinates in one pass"
timeout 60 $BENCH --device cuda --systems 22x3 --batches 256 --steps 4 --tasks sample --modes exact-batched \
  --chunk-size 66 --timeout 50
echo "== GPU: reverse KL through the exact divergence (adjoint, micro-batches of 64)"
timeout 100 $BENCH --device cuda --systems 22x3 --batches 256 --steps 4 --tasks revkl --exact-micro-batch 64 --timeout 40
echo "== GPU: exact log q of 10,000 alanine points (configs/ala2_implicit.yaml eval solver)"
timeout 120 $PY scripts/bench_logprob.py --config configs/ala2_implicit.yaml --pdb $PDB --n 10000 --device cuda \
  | grep -v points,
echo "== waiting for the CPU jobs"
wait
for f in "$OUT"/cpu_*.txt; do echo "== $f"; cat "$f"; done
