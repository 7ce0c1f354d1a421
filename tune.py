"""Tune a dataset's QSNN hyperparameters with Optuna; the winning config is written for run.py --config.

    python tune.py mnist --demo --n-trials 6 --epochs 3 --set num_steps=10   # offline, a few minutes
    python tune.py mnist --n-trials 50 --storage postgresql+psycopg2://user:pw@host/qsnn   # pip install psycopg2-binary
    python tune.py mnist --best          # print the best trial, write runs/tune/mnist_best.json
    python tune.py --help                # every option

The search itself lives in qsnn/tuning.py.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere without installing
from qsnn.tuning import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
