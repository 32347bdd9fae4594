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
from omegaconf import OmegaConf, open_dict

from experiments.contract import read_json
from experiments.data import DataError, DeviceBatches, load_data
from experiments.device import pick_device
from experiments.run.probes import evaluate
from experiments.run.resume_guard import recorded_precision
from experiments.weights import WeightsError, load_trained, run_config


def evaluate_run(run_dir: Path, data_root: str | None = None, device: str | None = None) -> dict:
    """{"test_err", "test_loss", "eval_size", "recorded_test_err", "precision", "device"} of the run's net."""
    cfg = run_config(run_dir)
    model = load_trained(run_dir)
    with open_dict(cfg):
        if data_root is not None:
            cfg.data.root = data_root
        if device is not None:
            cfg.trainer.device = device
    dev = pick_device(cfg.trainer, recorded_precision(run_dir / "config.yaml"))
    data = load_data(cfg.data)
    batches = DeviceBatches(data, dev.device, cfg.optim.batch_size, cfg.seed,
                            augment=cfg.data.get("augment", "crop_flip"), channels_last=dev.channels_last)
    model.to(dev.device, memory_format=dev.memory_format)
    row = evaluate(model, batches, dev.autocast, cfg.trainer.eval_batch_size)
    summary = read_json(run_dir / "summary.json")
    recorded = summary.get("final_test_err") if isinstance(summary, dict) else None
    return {"test_err": row["test_err"], "test_loss": row["test_loss"], "eval_size": len(data.eval_labels),
            "recorded_test_err": recorded, "precision": dev.precision, "device": str(dev.device)}


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
