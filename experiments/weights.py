"""A trained network as data: `weights.safetensors` beside a completed run's summary.json, and
`load_trained(run_dir)`, the one call that gives it back as an eval-mode nn.Module.

The file holds the model's whole state (parameters and BatchNorm running statistics) in fp32, and
metadata naming the network; reading it never unpickles anything (safetensors), so a results folder
that was copied, mailed or committed stays data. The network is built from the run's own config.yaml
and the file must match it exactly: any other key, shape or name is refused with one line.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from experiments.contract import arch_kind, shortcut_name
from experiments.models import build_from_config

WEIGHTS = "weights.safetensors"
WEIGHTS_FORMAT = "1"  # safetensors metadata values are strings
NUM_CLASSES = 10      # every net the suite trains is a CIFAR-10 classifier


class WeightsError(ValueError):
    """A weights file that does not hold the run's network; str(e) is one line naming the file."""


def network_metadata(model_cfg) -> dict[str, str]:
    """What names a network, as strings: what the file says it holds, checked against config.yaml."""
    m = model_cfg
    return {"format": "degradation-suite-weights", "format_version": WEIGHTS_FORMAT, "arch": str(m.arch),
            "depth": str(m.depth), "shortcut": shortcut_name(m.arch, m.shortcut), "width": str(m.width),
            "stem": str(m.get("stem", "cifar")), "classes": str(NUM_CLASSES)}


def weights_bytes(state: dict[str, torch.Tensor], model_cfg) -> bytes:
    """A model state as the bytes of weights.safetensors (the run writes them atomically): floating tensors in fp32, contiguous (channels_last is a
    layout, not a value), on the CPU; BatchNorm's integer counters as they are."""
    tensors = {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous()
               for k, v in state.items()}
    return safetensors_bytes(tensors, metadata=network_metadata(model_cfg))


def run_config(run_dir: Path) -> DictConfig:
    """The run's config.yaml, or a WeightsError naming it."""
    path = Path(run_dir) / "config.yaml"
    try:
        cfg = OmegaConf.load(path)
    except FileNotFoundError:
        raise WeightsError(f"{path} is missing: {run_dir} is not a run folder (give the folder that holds "
                           f"config.yaml and {WEIGHTS})") from None
    except Exception as e:
        raise WeightsError(f"{path} is unreadable ({type(e).__name__}); restore it from the run's copy") from None
    if not isinstance(cfg, DictConfig) or not isinstance(cfg.get("model"), DictConfig):
        raise WeightsError(f"{path} holds no model config; restore it from the run's copy")
    return cfg


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, or a WeightsError saying why it cannot be read."""
    if not path.is_file():
        raise WeightsError(f"{path} is missing: the run did not complete since the suite writes weights "
                           f"(rerun its sweep: a completed run with its last.pt gets them from it)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"{path} is not a readable safetensors file ({reason}); it is truncated or "
                           f"corrupt: retrain the run or restore the file") from None


def check_weights(path: Path, tensors: dict, meta: dict, model: torch.nn.Module, model_cfg) -> None:
    """Refuse a file that names another network or holds other tensors than `model` has."""
    want = network_metadata(model_cfg)
    wrong = [f"{k} {meta.get(k)!r} (config.yaml: {v!r})" for k, v in want.items() if meta.get(k) != v]
    if wrong:
        raise WeightsError(f"{path} holds another network than its run's config.yaml: {'; '.join(wrong)}")
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise WeightsError(f"{path} does not match {arch_kind(model_cfg.arch)}-{model_cfg.depth}: "
                           f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                           f"extra {extra[:3]}{'...' if len(extra) > 3 else ''}")
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape) or tensors[k].is_floating_point() != v.is_floating_point():
            raise WeightsError(f"{path}: tensor {k} has shape {tuple(tensors[k].shape)} "
                               f"({tensors[k].dtype}), the network needs {tuple(v.shape)} ({v.dtype})")


def load_trained(run_dir: str | Path) -> torch.nn.Module:
    """The trained network of a completed run, in eval mode on the CPU, built from the run's own
    config.yaml and loaded from its weights.safetensors (checked against it)."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    model = build_from_config(cfg.model)
    path = run_dir / WEIGHTS
    tensors, meta = read_weights(path)
    check_weights(path, tensors, meta, model, cfg.model)
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in tensors.items()}, strict=True)
    return model.eval()
