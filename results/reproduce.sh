#!/usr/bin/env bash
# Re-create every run in results/ with the project's own run.py files (CPU: about a day; GPU: minutes).
#
#   bash results/reproduce.sh DATA_DIR [paper|schedules|minima]
#
# DATA_DIR/MNIST/raw/ holds the four MNIST files (.gz or not); FashionMNIST comes from
# DATA_DIR/FashionMNIST/raw/ or Debian's dataset-fashion-mnist package. Without a part, both parts run;
# the two parts can run at the same time (e.g. one process per core with OMP_NUM_THREADS=1).
# Every command resumes: run it again after an interruption and finished work is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-data}
PART=${2:-all}
case $PART in all|paper|schedules|minima) ;; *) echo "error: unknown part $PART; use paper, schedules or minima" >&2; exit 2 ;; esac
OUT=${OUT:-results}

# (a) The paper's exact configs (4-bit, T=100, batch 128, periodic cosine with t_max 4,690), one trial
# of 10 epochs: one fall of the cosine (4,690 iterations), so the last epoch ends at the LR's trough.
if [ "$PART" = all ] || [ "$PART" = paper ]; then
  for dataset in fashion_mnist mnist; do
    python "$dataset/run.py" --data_dir "$DATA" --output_dir "$OUT/paper" --num_trials 1 --epochs 10 --resume
  done
fi
if [ "$PART" = all ] || [ "$PART" = schedules ]; then

# (b) Does the periodic schedule help? FashionMNIST at reduced cost: T=10 steps, 5 epochs for every
# schedule, 3 seeds. periodic: cosine falling to 0 over 1 epoch (469 iterations) and rising over the next,
# so epochs 1, 3, 5 end at a trough; monotone: the same cosine stretched over all 5 epochs (no rise);
# constant: the peak lr throughout. Everything else is the paper's FashionMNIST config.
for bits in ${PRECISIONS:-4 2 None}; do  # PRECISIONS="None" runs one precision (e.g. in another process)
  for schedule in periodic monotone constant; do
    case $schedule in
      periodic) args="--scheduler cosine --t_max 469" ;;
      monotone) args="--scheduler cosine --t_max 2345" ;;
      constant) args="--scheduler constant" ;;
    esac
    precision=$([ "$bits" = None ] && echo fp32 || echo "${bits}bit")
    # shellcheck disable=SC2086
    python fashion_mnist/run.py --data_dir "$DATA" --output_dir "$OUT/schedules" \
      --exp_name "fashion_mnist_T10_${precision}_${schedule}" --num_bits "$bits" --num_steps 10 \
      --epochs 5 --patience 5 --num_trials 3 $args --resume
  done
done
# The 4-bit periodic cell again with compute_precision bf16 (issue 22's parity check): seeds 0-1, and seed 2
# in a folder of its own (so it could run in a second process); the results table pools the two.
common="--num_bits 4 --num_steps 10 --epochs 5 --patience 5 --scheduler cosine --t_max 469 --compute_precision bf16"
# shellcheck disable=SC2086
python fashion_mnist/run.py --data_dir "$DATA" --output_dir "$OUT/schedules" \
  --exp_name fashion_mnist_T10_4bit_periodic_bf16 --num_trials 2 --seed 0 $common --resume
# shellcheck disable=SC2086
python fashion_mnist/run.py --data_dir "$DATA" --output_dir "$OUT/schedules" \
  --exp_name fashion_mnist_T10_4bit_periodic_bf16_s2 --num_trials 1 --seed 2 $common --resume
fi

if [ "$PART" = all ] || [ "$PART" = minima ]; then

# (c) Navigating minima (issue 18): the same FashionMNIST network at T=10 for 18 epochs, 3 seeds, one run
# folder per cell (precision x schedule x seed), snapshots at every epoch end for landscape.py.
# periodic: cosine falling to 0 over 2 epochs (938 iterations) and rising over the next 2, troughs at
# epochs 2, 6, 10, 14, 18; monotone: one fall over all 18 epochs (8,442 iterations); constant: the peak lr.
# The cells are the grid results/sweeps/minima.json, trained by sweep.py in priority order (seed 0 of every
# precision and schedule first), each as `python fashion_mnist/run.py ... --resume`; see them with
#   python sweep.py results/sweeps/minima.json --dry-run
# Several copies of this part can run at once (one per core or GPU): each cell is claimed by one copy, in
# $OUT/minima.sweep.db; on several machines, give them one database, e.g.
# STORAGE=postgresql+psycopg2://user:password@dbhost/qsnn. A killed copy's cell goes to the next copy started.
python sweep.py results/sweeps/minima.json --data_dir "$DATA" --output_dir "$OUT/minima" ${STORAGE:+--storage "$STORAGE"}
fi
