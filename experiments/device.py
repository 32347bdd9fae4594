"""Where and how a run computes: device, precision, memory format, threads."""
from __future__ import annotations

import os
import platform
from contextlib import nullcontext
from dataclasses import dataclass

import torch


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


@dataclass
class RunDevice:
    device: torch.device
    precision: str          # "fp32" | "bf16" (autocast)
    channels_last: bool
    compile: bool
    threads: int

    @property
    def memory_format(self):
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def sgd_kwargs(self) -> dict:
        # Fused SGD on CUDA is one kernel for all parameters; foreach elsewhere.
        return {"fused": True} if self.device.type == "cuda" else {"foreach": True}

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def maybe_compile(self, fn):
        return torch.compile(fn) if self.compile else fn

    def describe(self) -> dict:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else (
            "Apple MPS" if self.device.type == "mps" else f"{cpu_name()} ({self.threads} threads)")
        return {"device": self.device.type, "device_name": name, "precision": self.precision,
                "channels_last": self.channels_last, "threads": self.threads, "compiled": self.compile}


def resolve_precision(setting: str, device_type: str) -> str:
    """`auto`: bf16 autocast on CUDA, fp32 elsewhere; `fast`: bf16 wherever the hardware runs it
    natively (CUDA, CPUs with AVX512-BF16/AMX); `fp32` / `bf16` as given."""
    cuda_bf16 = device_type == "cuda" and torch.cuda.is_bf16_supported()
    if setting == "auto":
        return "bf16" if cuda_bf16 else "fp32"
    if setting == "fast":
        return "bf16" if cuda_bf16 or (device_type == "cpu" and cpu_supports_bf16()) else "fp32"
    return setting


def pick_device(trainer) -> RunDevice:
    """`trainer.device=auto` picks cuda, then mps, then cpu; precision and layout follow the device."""
    if trainer.device == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    else:
        name = str(trainer.device)
    device = torch.device(name)
    threads = available_cores() if trainer.threads == "auto" else int(trainer.threads)
    torch.set_num_threads(threads)
    precision = resolve_precision(trainer.precision, device.type)
    channels_last = device.type in ("cuda", "cpu") if trainer.channels_last == "auto" else bool(trainer.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
    return RunDevice(device, precision, channels_last, bool(trainer.compile), threads)
