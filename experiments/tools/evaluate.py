"""`python -m experiments.evaluate RUN_DIR`: the test error of a completed run's trained network.

The network comes from the run's weights.safetensors (experiments/weights.py), the data from the run's
own config.yaml (or --data-root, where the images live elsewhere now), the arithmetic from the run's
recorded precision and memory layout: on the same kind of device it prints the run's recorded final
test error, to the last digit.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from experiments.contract import read_json
from experiments.data import DataError
from experiments.run.probes import evaluate
from experiments.tools.trained_run import open_run
from experiments.weights import WeightsError, run_config


def evaluate_run(run_dir: Path, data_root: str | None = None, device: str | None = None) -> dict:
    """{"test_err", "test_loss", "eval_size", "recorded_test_err", "precision", "device"} of the run's net."""
    run = open_run(run_dir, data_root, device)
    row = evaluate(run.model, run.batches, run.dev.autocast, run.cfg.trainer.eval_batch_size)
    summary = read_json(Path(run_dir) / "summary.json")
    recorded = summary.get("final_test_err") if isinstance(summary, dict) else None
    return {"test_err": row["test_err"], "test_loss": row["test_loss"], "eval_size": len(run.batches.eval_labels),
            "recorded_test_err": recorded, "precision": run.dev.precision, "device": str(run.dev.device)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a completed run's folder (results/<exp>/runs/<net>/seed=<k>)")
    p.add_argument("--data-root", help="where the run's images are now, if not at its recorded data.root")
    p.add_argument("--device", help="where to compute (default: the run's trainer.device, usually auto)")
    args = p.parse_args(argv)
    try:
        out = evaluate_run(args.run_dir, args.data_root, args.device)
    except (WeightsError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    split = OmegaConf.select(run_config(args.run_dir), "data.split", default="test")
    recorded = out["recorded_test_err"]
    print(f"{args.run_dir}: {split} error {out['test_err']:.2f}% on {out['eval_size']} images "
          f"({out['precision']} on {out['device']}, torch {torch.__version__})"
          + (f"; recorded final {split} error {recorded:.2f}%" if isinstance(recorded, (int, float)) else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
