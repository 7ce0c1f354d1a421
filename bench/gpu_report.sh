#!/usr/bin/env bash
# The GPU figures the README still lacks, in one command (about 5-8 minutes on one data-centre GPU):
#
#   bash bench/gpu_report.sh DATA_DIR        # DATA_DIR/MNIST/raw/ holds the four MNIST files (.gz or not)
#
# Prints (1) the benchmark table (reference vs fast execution, MNIST and DVS shapes, with the
# agreement checks; then fp32 against compute_precision bf16 with GFLOP/s against the GPU's matmul peaks), (2) the wall time of each full MNIST epoch at the paper's config, data loading
# and evaluation included, and (3) the test accuracy after 3 epochs. Nothing is written to the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: bash bench/gpu_report.sh DATA_DIR (holding MNIST/raw/)}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this report is for a GPU machine')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== 1. benchmark (B=128, T=100 MNIST; B=16, T=100 DVS) =="
python bench/bench_speed.py --device cuda --iters 20 --warmup 5 --time-chunks 0 --full-epoch no

echo "== 1b. compute_precision fp32 against bf16, fast path only (eval in the paper's test batches of 1000) =="
python bench/bench_speed.py --device cuda --iters 20 --warmup 5 --no-reference --precisions fp32,bf16 \
  --eval-batch 1000 --full-epoch no

echo "== 2-3. the paper's MNIST config (4-bit, T=100, batch 128, cosine), 1 trial, 3 epochs =="
start=$(date +%s)
python mnist/run.py --data_dir "$DATA" --output_dir "$OUT" --exp_name gpu_report --device cuda \
  --num_trials 1 --epochs 3 2>/dev/null | grep -E "^(experiment|reading|trial)"
end=$(date +%s)
python - "$OUT/gpu_report" $((end - start)) <<'PY'
import csv, sys
rows = list(csv.DictReader(open(f"{sys.argv[1]}/acc_gpu_report_t0.csv")))
for r in rows:
    print(f"epoch {r['epoch']}: training {float(r['train_time']):.1f} s, test accuracy {float(r['test_acc']):.2f}%")
print(f"whole run (start-up, data loading, 3 epochs with evaluation): {sys.argv[2]} s")
print(f"test accuracy after 3 epochs: {float(rows[-1]['test_acc']):.2f}%")
PY
