"""What a run's numbers depend on (its result config), and the guard that refuses to continue a run
folder computed under another.

A run folder is named by model and seed only; iterations, data and recipe live in its records
(config.yaml, last.pt, summary.json), and a resume must match them. Every leaf of conf/ is either a
result key or listed in NOT_RESULT_KEYS with the reason; tests/test_resume_guard.py composes every
config group and fails on a leaf that is neither.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from experiments.contract import FINISHED, leaves, read_json
from experiments.data import DEFAULT_AUGMENT
from experiments.device import RunDevice
from experiments.run.checks import ConfigError
from experiments.run.schedule import LrSchedule
from experiments.runfiles import UnsafeCheckpoint, load_checkpoint

# Keys (or whole groups) that change what a run computes.
RESULT_KEYS = ("model", "optim", "schedule", "seed", "data.source", "data.split", "data.train_subset",
               "data.num_train", "data.num_eval", "data.normalize", "data.augment", "trainer.eval_every",
               "trainer.probes", "trainer.probe_batch", "trainer.precision")
# Keys that do not, and why: a run may resume with any of them changed.
NOT_RESULT_KEYS = {
    "experiment_name": "names the folder: another value is another run",
    "results_dir": "where the folder lives",
    "data.root": "where the images are read from (the official archive is checksum-verified)",
    "data.download": "whether a missing archive may be fetched",
    "data.cache_dir": "where decoded images are cached (keyed by the source's fingerprint)",
    "trainer.device": "where it computes: a resume elsewhere keeps the recorded precision (precision_used); it "
                      "differs as the devices' arithmetic does and, on another device type, in its batches too "
                      "(CUDA's and the CPU's generators draw different crops, flips and orders from one seed)",
    "trainer.threads": "CPU threads: speed (the last bits of a CPU sum may differ)",
    "trainer.channels_last": "memory layout: speed",
    "trainer.compile": "torch.compile: speed",
    "trainer.cuda_graphs": "one launch per step: speed",
    "trainer.eval_batch_size": "evaluation in eval mode: per-image outputs do not depend on the batch "
                               "(its sums may differ in the last bits)",
    "trainer.ckpt_every": "how often progress is saved",
    "trainer.resume": "whether to continue at all",
    "trainer.time_limit": "when this invocation stops (a checkpoint, then a resume): not what it computes",
    "trainer.progress": "what is shown while training",
}
# Result-config leaves the suite gained after runs were already recorded, with the value that a run
# recorded before the key existed effectively used. Completed runs (results/reference/ among them) keep
# the config.yaml they were written with: a leaf missing there is compared as this default, and a leaf
# missing and not listed here is not compared at all, so growing the config never turns a finished run
# into a "different config" (a key whose absence would change the result must be listed here).
RESULT_KEY_DEFAULTS = {"data.augment": DEFAULT_AUGMENT, "trainer.probe_batch": 128}
# summary.json fields that restate result-config leaves: the last word when config.yaml and last.pt are gone.
SUMMARY_KEYS = {"iterations": "schedule.iterations", "lr": "optim.lr", "batch_size": "optim.batch_size",
                "weight_decay": "optim.weight_decay", "momentum": "optim.momentum", "seed": "seed",
                "data_source": "data.source", "data_split": "data.split", "depth": "model.depth"}
_ABSENT = object()


def _schedule_as_computed(cfg: DictConfig) -> dict:
    # Milestones resolved, warm-up settings only where warm-up is on: a moved default (warmup_max_iters
    # 4000 -> auto) cannot flag a finished run that never warmed up.
    resolved = LrSchedule.from_config(cfg.optim, cfg.schedule, cfg.model.depth)
    return {"iterations": cfg.schedule.iterations, **resolved.identity()}


# Result keys compared as they compute rather than as written. An unreadable one stays as written: it
# compares unequal, as it should.
RESOLVED = {"schedule": _schedule_as_computed}


def result_config(cfg: DictConfig) -> dict:
    """The RESULT_KEYS of cfg as plain values, the RESOLVED ones as they compute. A key missing from cfg
    (a config.yaml older than the key) takes its documented default (RESULT_KEY_DEFAULTS) or is left out."""
    out = {}
    for key in RESULT_KEYS:
        value = OmegaConf.select(cfg, key, default=RESULT_KEY_DEFAULTS.get(key, _ABSENT))
        if value is not _ABSENT:
            out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    for key, resolve in RESOLVED.items():
        try:
            out[key] = resolve(cfg)
        except Exception:
            pass
    return out


def changed_keys(saved: dict, current: dict) -> list[str]:
    """The result-config leaves on which a saved run and `current` disagree (see RESULT_KEY_DEFAULTS)."""
    old, new = leaves(saved), leaves(current)
    changed = []
    for key in sorted(set(old) | set(new)):
        if key in old and key in new:
            differ = old[key] != new[key]
        elif key in new:  # added to the suite after this run was recorded
            differ = key in RESULT_KEY_DEFAULTS and new[key] != RESULT_KEY_DEFAULTS[key]
        else:  # dropped from the suite: nothing to compare with
            differ = False
        if differ:
            changed.append(key)
    return changed


def saved_result_config(path: Path) -> dict | None:
    try:
        loaded = OmegaConf.load(path)
        return result_config(loaded) if isinstance(loaded, DictConfig) else None
    except Exception:  # missing or unreadable: nothing to compare against
        return None


def checkpoint_result_config(path: Path) -> dict | None:
    """The result config a checkpoint was written under (None: no readable checkpoint, or one from
    before checkpoints carried it). A checkpoint that holds more than data is refused (ConfigError):
    it is never unpickled, and the run's files stay as they are."""
    if not path.exists():
        return None
    try:
        state = load_checkpoint(path)
    except UnsafeCheckpoint as e:
        raise ConfigError(str(e)) from None
    except Exception:  # unreadable: Trainer.load names it and trains from the start
        return None
    saved = state.get("result_config")
    return saved if isinstance(saved, dict) else None


def refuse_changed_config(cfg: DictConfig, folder: Path, finished: bool = False) -> None:
    """Raise ConfigError when what the folder holds was computed under another result config. Every
    record is asked, so a deleted or garbled config.yaml cannot let a run resume under a new config:
    config.yaml, the checkpoint (which carries its config), and summary.json's restated fields. A
    `finished` run is never resumed, so its checkpoint is not even opened."""
    current, recorded = result_config(cfg), recorded_precision(folder / "config.yaml")
    checks = [("config.yaml", saved_result_config(folder / "config.yaml")),
              ("last.pt", None if finished else checkpoint_result_config(folder / "last.pt"))]
    changed: dict[str, list[str]] = {}
    for source, saved in checks:
        if saved is not None:
            changed[source] = changed_keys(*precision_as_computed(saved, current, recorded))
    summary = read_json(folder / "summary.json")
    if isinstance(summary, dict) and not changed:  # config.yaml and last.pt both gone or unreadable
        flat = leaves(current)
        changed["summary.json"] = sorted(key for field, key in SUMMARY_KEYS.items()
                                         if field in summary and key in flat and summary[field] != flat[key])
    for source, keys in changed.items():
        if keys:
            raise ConfigError(
                f"{folder} holds a run with a different config ({', '.join(keys)}, per its {source}); "
                f"use trainer.resume=false to start it over or experiment_name=... for a new folder")


# -- one recipe per experiment folder ---------------------------------------------------------------------
# What may differ between the finished runs of one experiment by design: the seed and the precision (the
# report names mixed pairs) for every run, and across nets the net itself and its warm-up (the paper warms
# up ResNet-110 only). Anything else is another recipe, which the report must never pool.
PER_RUN, PER_NET = ("seed", "trainer.precision"), ("model.", "schedule.warmup")


def finished_recipes(runs_dir: Path) -> list[tuple[Path, dict]]:
    """(folder, result config) of every finished run under an experiment's runs/ folder."""
    out = []
    for config in sorted(runs_dir.glob("*/seed=*/config.yaml")):
        summary = read_json(config.parent / "summary.json")
        saved = saved_result_config(config) if isinstance(summary, dict) and summary.get("status") in FINISHED \
            else None
        if saved is not None:
            out.append((config.parent, saved))
    return out


def refuse_other_recipe(cfg: DictConfig, folder: Path, finished: list[tuple[Path, dict]]) -> None:
    """ConfigError when the run `cfg` would train under another recipe than the finished runs beside it
    (`finished_recipes`): a sweep that adds seeds with a changed lr is refused before it trains anything."""
    current = result_config(cfg)
    for other, saved in finished:
        if other == folder:
            continue  # its own folder: refuse_changed_config
        allowed = PER_RUN + (PER_NET if other.parent.name != folder.parent.name else ())
        keys = [k for k in changed_keys(saved, current) if not k.startswith(allowed)]
        if keys:
            raise ConfigError(f"{folder.parent.name} {folder.name} would train with another {', '.join(keys)} than "
                              f"the finished run {other}; keep its recipe, or train apart with experiment_name=... "
                              f"or RESULTS=...")


# -- the precision a run computes in stays what it started in -------------------------------------------
def precision_as_computed(saved: dict, current: dict, recorded: str | None) -> tuple[dict, dict]:
    """trainer.precision compared as it computes where the run recorded it (precision_used): a run written
    as `fast` that computed in bf16 goes on under an explicit bf16 (what the sweep's precision note
    suggests), and `auto`/`fast` resume a run in its recorded precision (pick_device), so they never
    conflict with it. Only an explicit other precision differs. Without a record: compared as written."""
    key = "trainer.precision"
    if recorded is None or key not in current:
        return saved, current
    asked = current[key]
    return {**saved, key: recorded}, {**current, key: recorded if asked in ("auto", "fast") else asked}


def config_yaml(cfg: DictConfig, dev: RunDevice) -> str:
    """The run's resolved config, plus what `auto`/`fast` resolved to on this machine, so a resume on
    another kind of device continues in the same precision (pick_device)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["trainer"]["precision_used"] = dev.precision
    return OmegaConf.to_yaml(resolved)


def recorded_precision(path: Path) -> str | None:
    """The precision a run computed in so far (trainer.precision_used, written since the GPU path
    landed; older configs do not have it)."""
    try:
        return OmegaConf.select(OmegaConf.load(path), "trainer.precision_used")
    except Exception:
        return None
