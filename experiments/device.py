"""Where and how a run computes: device, precision, memory format, threads, and which GPU a parallel
job takes.

Only the run's own process initialises CUDA. What the sweep planner and the joblib parent need
(is there a GPU, does it have native bf16, how many are visible) comes from NVML, which
`torch.cuda.device_count()` and `nvml_compute_capabilities()` use without creating a CUDA context.
"""
from __future__ import annotations

import os
import platform
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fast", "fp32", "bf16")


def cpu_supports_bf16() -> bool:
    """bf16 autocast only pays on CPUs with native bf16 instructions (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_kind() -> dict:
    """What tells one kind of CPU from another, for speed and exact numerics alike: benchmarks that calibrate
    the planner's estimates (sweep/status.py, this_device) and the tests' pinned metrics match on it. The name
    alone is not enough: this project's VM has been an "AMD EPYC" with AVX512-BF16 and one with AVX2 only,
    4.5x apart in fp32 speed and apart in the fifth digit of a metric."""
    return {"cpu": cpu_name(), "native_bf16": cpu_supports_bf16(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


# Identity keys added after records were first written: a record without one is matched on the rest.
LATER_KEYS = ("cpu_capability",)


def made_on_a_machine_like(record: dict, here: dict) -> bool:
    """Whether `record` (a benchmark, a pin) was made on a machine like `here`: every key of `here` matches,
    except a LATER_KEYS one the record predates."""
    return all(record[k] == v if k in record else k in LATER_KEYS for k, v in here.items())


# -- what is there, without initialising CUDA ---------------------------------------------------------
def detect_device_type() -> str:
    """cuda, then mps, then cpu, as `trainer.device=auto` picks; counts GPUs through NVML (honouring
    CUDA_VISIBLE_DEVICES), so the calling process holds no CUDA context afterwards."""
    if torch.cuda.device_count() > 0:
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def visible_gpus() -> list[str]:
    """The visible GPUs as CUDA_VISIBLE_DEVICES names them (indices or UUIDs), or as 0..n-1 without it."""
    n = torch.cuda.device_count()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    return [t.strip() for t in env.split(",")][:n] if env is not None else [str(i) for i in range(n)]


def nvml_gpus() -> list[dict] | None:
    """Name and compute capability of every GPU NVML sees (all of them, not only the visible ones),
    or None where NVML is missing. No CUDA context is created."""
    from ctypes import CDLL, byref, c_int, c_void_p, create_string_buffer
    try:
        nvml = CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() != 0:
            return None
        count, gpus = c_int(0), []
        if nvml.nvmlDeviceGetCount_v2(byref(count)) != 0:
            return None
        for i in range(count.value):
            handle, major, minor, name = c_void_p(), c_int(), c_int(), create_string_buffer(96)
            if (nvml.nvmlDeviceGetHandleByIndex_v2(i, byref(handle)) != 0
                    or nvml.nvmlDeviceGetCudaComputeCapability(handle, byref(major), byref(minor)) != 0):
                return None
            named = nvml.nvmlDeviceGetName(handle, name, 96) == 0
            gpus.append({"name": name.value.decode(errors="replace") if named else None,
                         "capability": (major.value, minor.value)})
        return gpus
    except (OSError, AttributeError):
        return None


def nvml_driver_version() -> str | None:
    """The NVIDIA driver's version ("570.124.06"), or None where NVML is missing. No CUDA context."""
    from ctypes import CDLL, create_string_buffer
    try:
        nvml = CDLL("libnvidia-ml.so.1")
        text = create_string_buffer(96)
        if nvml.nvmlInit_v2() != 0 or nvml.nvmlSystemGetDriverVersion(text, 96) != 0:
            return None
        return text.value.decode(errors="replace")
    except (OSError, AttributeError):
        return None


def nvml_compute_capabilities() -> list[tuple[int, int]] | None:
    gpus = nvml_gpus()
    return None if gpus is None else [g["capability"] for g in gpus]


def nvml_gpu_name() -> str | None:
    """The first GPU's name as CUDA reports it ("NVIDIA H100 80GB HBM3"), through NVML: no CUDA context."""
    gpus = nvml_gpus()
    return gpus[0]["name"] if gpus else None


def planned_native_bf16(device_type: str) -> bool:
    """Native bf16 for planning (time estimates) without touching CUDA: every GPU at compute capability
    8.0 or above per NVML; without NVML, assume a current GPU."""
    if device_type == "cuda":
        caps = nvml_compute_capabilities()
        return caps is None or (bool(caps) and min(caps) >= (8, 0))
    return device_type == "cpu" and cpu_supports_bf16()


def native_bf16(device: torch.device) -> bool:
    """bf16 in hardware: CUDA compute capability 8.0+ (Ampere on; `is_bf16_supported()` also counts
    emulation, which makes convolutions slower than fp32), CPUs with AVX512-BF16/AMX; not MPS."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)  # initialises CUDA: run processes only
    return device.type == "cpu" and cpu_supports_bf16()


def resolve_precision(setting: str, device_type: str, native: bool) -> str:
    """`auto`: bf16 autocast on CUDA with native bf16, fp32 elsewhere; `fast`: bf16 wherever the hardware
    has it natively (also CPUs with AVX512-BF16/AMX); `fp32` / `bf16` as given."""
    if setting == "auto":
        return "bf16" if device_type == "cuda" and native else "fp32"
    if setting == "fast":
        return "bf16" if native and device_type in ("cuda", "cpu") else "fp32"
    return setting


def tf32_convolutions(device: torch.device, precision: str) -> bool:
    """fp32 convolutions on Ampere and later run in TF32 (10-bit mantissa) unless disabled: PyTorch's
    default for cuDNN, kept here for speed; `torch.backends.cudnn.conv.fp32_precision = "ieee"` turns it off."""
    if device.type != "cuda" or precision != "fp32" or torch.cuda.get_device_capability(device) < (8, 0):
        return False
    setting = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", "none")
    return setting == "tf32" or (setting == "none" and torch.backends.cudnn.allow_tf32)


@dataclass
class RunDevice:
    device: torch.device
    precision: str          # "fp32" | "bf16" (autocast): what the run computes in, recorded in config.yaml
    channels_last: bool
    compile: bool           # torch.compile the model (not the step)
    threads: int
    cuda_graphs: bool = False   # the whole training step as one CUDA graph (experiments/run/graphs.py)
    note: str | None = None     # why the precision is not the obvious one, printed once by the run

    @property
    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def sgd_kwargs(self) -> dict:
        # Fused SGD on CUDA is one kernel for all parameters, and it takes the lr as a device tensor
        # without a sync, which a CUDA graph needs; foreach elsewhere.
        return {"fused": True, "foreach": None} if self.device.type == "cuda" or self.cuda_graphs \
            else {"foreach": True, "fused": None}

    def autocast(self):
        if self.precision == "bf16":
            # Autocast's cast cache does not survive graph capture (PyTorch's CUDA graph docs).
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=not self.cuda_graphs)
        return nullcontext()

    def describe(self) -> dict:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else (
            "Apple MPS" if self.device.type == "mps" else f"{cpu_name()} ({self.threads} threads)")
        return {"device": self.device.type, "device_name": name, "precision": self.precision,
                "tf32": tf32_convolutions(self.device, self.precision), "channels_last": self.channels_last,
                "threads": self.threads, "compiled": self.compile, "cuda_graphs": self.cuda_graphs}


# -- `auto` resolved: the one place, for the run, the config checks and the sweep planner ---------------------
def resolve_device(setting) -> torch.device:
    """trainer.device: `auto` is cuda, then mps, then cpu; GPUs are counted through NVML (no CUDA context).
    Raises RuntimeError for a string that names no device."""
    return torch.device(detect_device_type() if setting == "auto" else str(setting))


TOOL_DEVICES = "auto, cpu, cuda, cuda:N or mps"


def tool_device(setting: str) -> torch.device:
    """A tool's --device (bench, gpu-check) as a device this machine has; CUDA with its index, since
    torch.cuda.set_device refuses a bare "cuda" (ValueError: Expected a torch.device with a specified
    index) and a child process is told its GPU by index. GPUs are counted through NVML: nothing starts
    CUDA here. Raises ValueError, one line naming the fix."""
    try:
        device = resolve_device(setting)
    except RuntimeError:
        raise ValueError(f"--device {setting!r} is not a device; use {TOOL_DEVICES}") from None
    if device.type == "cuda":
        n = torch.cuda.device_count()
        index = 0 if device.index is None else device.index  # bare "cuda": the current GPU, 0 in a new process
        if n == 0:
            raise ValueError(f"--device {setting}: no CUDA GPU is visible here; use --device auto or cpu")
        if index >= n:
            raise ValueError(f"--device {setting}: only cuda:0 to cuda:{n - 1} are visible; use one of them or auto")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {setting}: this machine has no MPS (Apple GPU); use --device auto or cpu")
    if device.type not in ("cpu", "mps"):
        raise ValueError(f"--device {setting}: the suite runs on cpu, cuda or mps only; use {TOOL_DEVICES}")
    return device


@dataclass(frozen=True)
class ResolvedTrainer:
    """trainer.device / precision / threads / channels_last as they resolve on this machine."""
    device: torch.device
    precision: str          # fp32 | bf16
    native_bf16: bool
    threads: int
    channels_last: bool


def resolve_trainer(trainer, planning: bool = False) -> ResolvedTrainer:
    """What `auto` (and precision `fast`) resolve to here. The run asks the chosen GPU itself whether it has
    native bf16 (which starts CUDA); `planning=True` (the sweep planner, which must leave CUDA alone) asks
    NVML about every GPU instead."""
    device = resolve_device(trainer.device)
    native = planned_native_bf16(device.type) if planning else native_bf16(device)
    threads = available_cores() if trainer.threads == "auto" else int(trainer.threads)
    channels_last = device.type in ("cuda", "cpu") if trainer.channels_last == "auto" else bool(trainer.channels_last)
    return ResolvedTrainer(device, resolve_precision(trainer.precision, device.type, native), native, threads,
                           channels_last)


def pick_device(trainer, recorded_precision: str | None = None) -> RunDevice:
    """The run's device (resolve_trainer), with its threads set. `recorded_precision`: what a run being
    resumed computed in so far; `auto`/`fast` keep it, so a run resumed on another kind of device cannot
    switch precision halfway (the switch is printed). Only the run's own process calls this: it starts CUDA."""
    resolved = resolve_trainer(trainer)
    device, native, precision = resolved.device, resolved.native_bf16, resolved.precision
    torch.set_num_threads(resolved.threads)
    note = None
    if recorded_precision in ("fp32", "bf16") and trainer.precision in ("auto", "fast") \
            and recorded_precision != precision:
        note = (f"trainer.precision={trainer.precision} gives {precision} on this {device.type}, but this run "
                f"started in {recorded_precision} (trainer.precision_used in its config.yaml): it continues "
                f"in {recorded_precision}")
        precision = recorded_precision
    elif device.type == "cuda" and trainer.precision in ("auto", "fast") and not native:
        major, minor = torch.cuda.get_device_capability(device)
        note = (f"trainer.precision={trainer.precision} gives fp32: {torch.cuda.get_device_name(device)} "
                f"(compute capability {major}.{minor}) has no native bf16")
    elif precision == "bf16" and not native:
        note = f"trainer.precision=bf16 on a {device.type} without native bf16: emulated, likely slower than fp32"
    if device.type == "cuda":
        # Fixed shapes: let cuDNN time its kernels once and keep the fastest. Not where determinism was asked
        # for (gpu-check's resume comparison): timing may pick other kernels after a restart.
        torch.backends.cudnn.benchmark = not torch.backends.cudnn.deterministic
    return RunDevice(device, precision, resolved.channels_last, bool(trainer.compile), resolved.threads,
                     bool(trainer.get("cuda_graphs", False)), note)


# -- one run per GPU: LAUNCHER=joblib places them, LAUNCHER=local cannot ---------------------------------
def local_launcher_problem() -> str | None:
    """Why LAUNCHER=local must not run here, or None. submitit's local executor starts every run at once
    and sets each one's CUDA_VISIBLE_DEVICES from gpus_per_node: 0 hides the GPUs (the runs train on the
    CPU while the planner estimates CUDA time), 1 puts every run on GPU 0. Its Hydra config has no way to
    spread them; joblib's workers claim a GPU each (claim_gpu)."""
    n = torch.cuda.device_count()  # NVML, honouring CUDA_VISIBLE_DEVICES: `CUDA_VISIBLE_DEVICES=` opts out
    if n == 0:
        return None
    return (f"LAUNCHER=local cannot give runs their own GPU (submitit's local executor starts them all at once, "
            f"hiding the {n} GPU(s) here or putting every run on GPU 0); use LAUNCHER=joblib JOBS={n}")


_CLAIMED: tuple | None = None  # (slot lock, GPU id) held for this worker process's life


def claim_gpu(slots_dir: Path, max_slots: int = 1024) -> str | None:
    """Pin this joblib worker to one visible GPU before CUDA starts: the worker takes the lowest free
    slot (a lock file, released when the process ends) and slot k takes GPU k mod n, so concurrent runs
    spread round-robin and JOBS may exceed the GPU count. A worker keeps its GPU for every later run
    (its CUDA context lives on it). Returns the GPU id, or None with fewer than two GPUs."""
    global _CLAIMED
    if _CLAIMED is not None:
        return _CLAIMED[1]
    gpus = visible_gpus()
    if len(gpus) < 2 or torch.cuda.is_initialized():  # nothing to spread, or too late to choose
        return None
    from filelock import FileLock, Timeout
    slots_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(max_slots):
        lock = FileLock(slots_dir / f"slot-{slot}.lock", timeout=0)
        try:
            lock.acquire()
        except Timeout:
            continue
        gpu = gpus[slot % len(gpus)]
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        _CLAIMED = (lock, gpu)
        return gpu
    return None
