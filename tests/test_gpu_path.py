"""The CUDA/MPS path, held on a CPU: devices are simulated (the meta device stands for a GPU's memory,
torch.cuda functions are patched) wherever the code would otherwise only run on a GPU."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from experiments import device as device_mod
from experiments import train as train_mod
from experiments.data import DeviceBatches, load_data
from experiments.device import RunDevice, cpu_kind, made_on_a_machine_like, pick_device, resolve_precision
from experiments.models import build_from_config
from experiments.run import trainer as trainer_mod
from experiments.run.checks import ConfigError
from experiments.run.probes import evaluate
from experiments.run.schedule import RunningError
from experiments.sweep import launch as sweep_launch
from experiments.sweep import plan as sweep_plan
from experiments.sweep import request as sweep_request
from experiments.sweep import status as sweep_status
from tests.helpers import REPO, TINY, cli, metrics, run_folder, summary, tiny_cfg

PINNED = json.loads((REPO / "tests" / "data" / "tiny_metrics_pinned.json").read_text())["machines"]
QUIET = "trainer.progress=false"


def pinned_here() -> dict | None:
    """The pins of a machine like this one: same torch and CPU kind (device.cpu_kind)."""
    here = {"torch_version": torch.__version__, **cpu_kind()}
    return next((m for m in PINNED if made_on_a_machine_like(m, here)), None)


# -- with compile and CUDA graphs off, a CPU run computes exactly what it did before the GPU path -----------
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_default_cpu_path_reproduces_the_pinned_metrics(tmp_path, precision):
    """tests/data/tiny_metrics_pinned.json: the TINY run's metrics (probes included) written by the code
    before this change, on the kinds of machine this project has had."""
    pins = pinned_here()
    if pins is None:
        pytest.skip(f"pinned on {', '.join(sorted({m['cpu'] for m in PINNED}))} with torch "
                    f"{', '.join(sorted({m['torch_version'] for m in PINNED}))}; kernels differ elsewhere")
    # probe_batch=128: the pins predate the tiny recipe's smaller probe batch
    train_mod.run(tiny_cfg(tmp_path, f"trainer.precision={precision}", "trainer.probe_batch=128", QUIET))
    assert metrics(run_folder(tmp_path)) == pins["runs"][precision]


# -- resume on a device: RNG states stay on the CPU, weights and momentum go to the device -------------------
@pytest.mark.filterwarnings("ignore:for .*meta parameter")  # loading into meta tensors copies nothing: expected
def test_resume_onto_a_device_keeps_rng_states_on_the_cpu(tmp_path, monkeypatch):
    train_mod.run(tiny_cfg(tmp_path, QUIET))
    folder = run_folder(tmp_path)
    state = torch.load(folder / "last.pt", weights_only=False)
    # as a CUDA run writes it: one CPU ByteTensor of generator state per GPU
    state["cuda_rng"] = [torch.get_rng_state(), torch.get_rng_state()]
    torch.save(state, folder / "last.pt")

    # A trainer whose device is not the CPU: 'meta' stands for a GPU (map_location=<device> moved the RNG
    # state there, and torch.set_rng_state accepts only a CPU ByteTensor: every resumed GPU run crashed).
    cfg = tiny_cfg(tmp_path)
    tr = train_mod.Trainer.__new__(train_mod.Trainer)
    tr.cfg, tr.folder = cfg, folder
    tr.dev = RunDevice(torch.device("meta"), "fp32", True, False, 1)
    with torch.device("meta"):
        tr.model = build_from_config(cfg.model)
    tr.opt = torch.optim.SGD(tr.model.parameters(), lr=0.1, momentum=0.9)
    tr.running_err = RunningError()
    restored = []
    real_set = torch.set_rng_state
    monkeypatch.setattr(torch, "set_rng_state", lambda s: (restored.append(s.device.type), real_set(s)))

    assert tr.load() is True
    assert restored == ["cpu"] and tr.iteration == 40
    assert all(p.device.type == "meta" for p in tr.model.parameters())
    assert all(s["momentum_buffer"].device.type == "meta" for s in tr.opt.state.values())
    assert all(v.device.type == "meta" for v in vars(tr.sums).values() if isinstance(v, torch.Tensor))
    assert tr.opt.param_groups[0]["foreach"] and tr.lr == state["opt"]["param_groups"][0]["lr"]


def test_a_checkpoint_that_fails_to_restore_leaves_the_fresh_model_untouched(tmp_path, capsys):
    train_mod.run(tiny_cfg(tmp_path, QUIET))
    folder = run_folder(tmp_path)
    state = torch.load(folder / "last.pt", weights_only=False)
    state["torch_rng"] = torch.zeros(3)  # loads, then fails at the RNG restore (inside the try now)
    torch.save(state, folder / "last.pt")
    tr = train_mod.Trainer(tiny_cfg(tmp_path), folder)
    fresh = {k: v.clone() for k, v in tr.model.state_dict().items()}
    assert tr.load() is False and tr.iteration == 0 and not (folder / "last.pt").exists()
    assert all(torch.equal(v, fresh[k]) for k, v in tr.model.state_dict().items())
    assert not tr.opt.state
    assert "unreadable" in capsys.readouterr().err


# -- precision from native support, recorded in the run's config -----------------------------------------
def _fake_gpu(monkeypatch, capability, name="Simulated GPU"):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: name)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.mark.parametrize("capability,auto,fast,tf32", [((7, 5), "fp32", "fp32", False), ((8, 0), "bf16", "bf16", True),
                                                       ((9, 0), "bf16", "bf16", True)])
def test_cuda_precision_follows_native_bf16_not_emulation(monkeypatch, capability, auto, fast, tf32):
    _fake_gpu(monkeypatch, capability, "Tesla T4" if capability < (8, 0) else "NVIDIA H100")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # counts emulation: not asked
    base = OmegaConf.create({"device": "cuda", "precision": "auto", "channels_last": "auto", "compile": False,
                             "cuda_graphs": False, "threads": 1})
    dev = pick_device(base)
    assert dev.precision == auto and dev.sgd_kwargs["fused"]
    assert (dev.note is not None) == (auto == "fp32")  # fp32 for lack of native bf16 is stated
    if dev.note:
        assert "compute capability 7.5" in dev.note and "Tesla T4" in dev.note
    assert pick_device(OmegaConf.merge(base, {"precision": "fast"})).precision == fast
    fp32 = pick_device(OmegaConf.merge(base, {"precision": "fp32"}))
    assert fp32.describe()["tf32"] is tf32 and fp32.describe()["precision"] == "fp32"
    assert pick_device(base).describe()["tf32"] is False  # bf16 or pre-Ampere: no TF32


def test_resolve_precision_table():
    assert [resolve_precision(s, "cpu", True) for s in ("auto", "fast", "fp32", "bf16")] == ["fp32", "bf16", "fp32", "bf16"]
    assert [resolve_precision(s, "cpu", False) for s in ("auto", "fast")] == ["fp32", "fp32"]
    assert [resolve_precision(s, "mps", False) for s in ("auto", "fast")] == ["fp32", "fp32"]


def test_the_precision_used_is_recorded_and_a_resume_keeps_it(tmp_path, capsys):
    short = "schedule.iterations=20"  # the resume may compute in emulated bf16: 10 steps of it are enough
    args = [*TINY, f"results_dir={tmp_path}", "trainer.precision=fast", short, QUIET]
    assert cli(*args, env={"SUITE_FAULT": "after:checkpoint:1"}).returncode != 0  # killed at iteration 10
    folder = run_folder(tmp_path)
    saved = OmegaConf.load(folder / "config.yaml")
    here = resolve_precision("fast", "cpu", device_mod.cpu_supports_bf16())
    assert saved.trainer.precision == "fast" and saved.trainer.precision_used == here
    # The run started on a device where `fast` meant the other precision: it must continue in that one.
    other = {"fp32": "bf16", "bf16": "fp32"}[here]
    saved.trainer.precision_used = other
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    s = train_mod.run(tiny_cfg(tmp_path, "trainer.precision=fast", short, QUIET))
    assert s["status"] == "completed" and s["precision"] == other
    assert OmegaConf.load(folder / "config.yaml").trainer.precision_used == other
    assert f"started in {other}" in capsys.readouterr().out


def test_a_completed_run_from_before_precision_used_is_still_done(tmp_path, monkeypatch):
    """results/reference/ holds configs without trainer.precision_used: rerunning their sweep must find
    them completed, not changed."""
    first = train_mod.run(tiny_cfg(tmp_path, "trainer.precision=fast", QUIET))
    path = run_folder(tmp_path) / "config.yaml"
    old = OmegaConf.load(path)
    del old.trainer["precision_used"]
    path.write_text(OmegaConf.to_yaml(old))
    monkeypatch.setattr(train_mod, "Trainer", lambda *a, **k: pytest.fail("a completed run must not train again"))
    assert train_mod.run(tiny_cfg(tmp_path, "trainer.precision=fast", QUIET)) == first


# -- probes: float32 on MPS, no per-layer host traffic -----------------------------------------------------
class _Ops(TorchDispatchMode):
    """Records every op with the dtypes it produced."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        self.ops.append((str(func), {o.dtype for o in outs if isinstance(o, torch.Tensor)}))
        return out


@pytest.mark.parametrize("device_type", ["cpu", "mps"])
def test_layer_response_probe_without_float64_on_mps_and_one_host_read(tmp_path, monkeypatch, device_type):
    cfg = tiny_cfg(tmp_path, "data.num_eval=256")
    data = load_data(cfg.data)
    batches = DeviceBatches(data, "cpu", 32, 0)
    torch.manual_seed(0)
    model = build_from_config(cfg.model)
    want = evaluate(model, batches, nullcontext, 64, True)
    batches.device = torch.device(device_type)  # the probe picks its accumulator dtype from the device
    reads = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: (reads.append("tolist"), real_tolist(t))[1])
    with _Ops() as ops:
        got = evaluate(model, batches, nullcontext, 64, True)
    names = [name for name, _ in ops.ops]
    reads += [n for n in names if "_local_scalar_dense" in n]
    # 4 batches x 7 layers ran the hook: still only loss, error and one copy of all layer sums reach the host
    assert len(reads) == 3, reads
    assert not [n for n in names if "lift_fresh" in n or "scalar_tensor" in n]  # no tensor made in a hook
    float64 = [n for n, dtypes in ops.ops if torch.float64 in dtypes]
    assert bool(float64) == (device_type == "cpu")  # fp64 accumulation where the device has fp64 only
    assert got["test_err"] == want["test_err"]
    assert got["response_std"] == pytest.approx(want["response_std"], rel=1e-5)
    if device_type == "cpu":
        assert got == want


# -- the planner leaves CUDA alone --------------------------------------------------------------------------
def test_planning_on_a_gpu_machine_never_initialises_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # what NVML reports, no CUDA context
    monkeypatch.setattr(device_mod, "nvml_compute_capabilities", lambda: [(9, 0), (9, 0)])

    def starts_cuda(*_a, **_k):
        raise AssertionError("the planner initialised CUDA")
    for name in ("_lazy_init", "init", "is_available", "current_device", "get_device_capability",
                 "get_device_properties", "is_bf16_supported", "get_device_name", "synchronize"):
        monkeypatch.setattr(torch.cuda, name, starts_cuda)
    args = sweep_launch.parse_args(["--exp", "quick", "--results", "/nonexistent-results", "--dry-run"])
    runs = sweep_plan.plan(args)
    sweep_status.print_plan(runs, args)
    assert len(runs) == 4 and {r.precision for r in runs} == {"bf16"}  # `fast` on an sm_90: native bf16
    assert "estimated time on cuda" in capsys.readouterr().out
    assert not torch.cuda.is_initialized()


def test_planned_precision_on_an_old_gpu_is_fp32(monkeypatch):
    monkeypatch.setattr(device_mod, "nvml_compute_capabilities", lambda: [(7, 5)])
    assert device_mod.planned_native_bf16("cuda") is False
    monkeypatch.setattr(device_mod, "nvml_compute_capabilities", lambda: None)  # no NVML: assume a current GPU
    assert device_mod.planned_native_bf16("cuda") is True


# -- one run per GPU under joblib ----------------------------------------------------------------------------
def test_joblib_workers_spread_round_robin_over_the_visible_gpus(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(5), ctx.Queue()

    def worker():  # a joblib worker: claims its GPU, then holds it while the others claim theirs
        results.put((device_mod.claim_gpu(tmp_path), os.environ["CUDA_VISIBLE_DEVICES"]))
        barrier.wait(timeout=30)

    workers = [ctx.Process(target=worker) for _ in range(5)]  # JOBS=5 on 2 GPUs
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    got = [results.get(timeout=5) for _ in workers]
    assert all(gpu == env for gpu, env in got)
    assert Counter(gpu for gpu, _ in got) == {"3": 3, "5": 2}
    # a worker that starts after the others ended takes the first freed slot: GPU 3
    late = ctx.Process(target=lambda: results.put(device_mod.claim_gpu(tmp_path)))
    late.start()
    late.join(timeout=60)
    assert results.get(timeout=5) == "3"


def test_gpu_claim_is_kept_per_worker_and_skipped_with_one_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(device_mod, "_CLAIMED", None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device_mod.claim_gpu(tmp_path) is None and "CUDA_VISIBLE_DEVICES" not in os.environ
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert device_mod.claim_gpu(tmp_path) == "0" and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # set by the claim; a second run in this worker keeps it
    assert device_mod.claim_gpu(tmp_path) == "0"


# -- CUDA graphs: refused off CUDA; their step logic (static buffers, lr tensor, warm-up undone) on a CPU ----
def test_cuda_graphs_are_refused_off_cuda_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="trainer.cuda_graphs=true needs a CUDA GPU"):
        train_mod.run(tiny_cfg(tmp_path / "r", "trainer.cuda_graphs=true"))
    assert not (tmp_path / "r").exists()
    proc = cli(*TINY, f"results_dir={tmp_path}", "trainer.cuda_graphs=true")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "set trainer.cuda_graphs=false" in lines[0]


def test_graphed_step_logic_matches_the_eager_run_through_a_resume(tmp_path, monkeypatch):
    """GraphedStep without capture (the CPU stand-in for replay): batches copied into static buffers, the
    lr a tensor changed in place at the milestones, zero momentum buffers, the warm-up undone, stopped by
    SIGTERM at iteration 15 and resumed. The eager reference uses fused SGD too, as every CUDA run does: on
    the CPU fused and foreach SGD round differently now and then (the tiny recipe's step 12 differs by 7e-9),
    so only with the same kernel must the metrics equal the eager run's exactly."""
    fused = property(lambda self: {"fused": True, "foreach": None})
    with monkeypatch.context() as m:
        m.setattr(RunDevice, "sgd_kwargs", fused)
        train_mod.run(tiny_cfg(tmp_path / "eager", QUIET))
    graphed = RunDevice(torch.device("cpu"), "fp32", True, False, 1, cuda_graphs=True)
    monkeypatch.setattr(train_mod, "pick_device", lambda *a, **k: graphed)
    real_iteration = train_mod.Trainer.train_iteration
    seen = []

    def stop_once(self, warming):
        out = real_iteration(self, warming)
        seen.append((self.iteration, type(self.opt.param_groups[0]["lr"]).__name__))
        if self.iteration == 15 and len(seen) == 15:  # the first run only
            self.signals.received = signal.SIGTERM
        return out
    monkeypatch.setattr(train_mod.Trainer, "train_iteration", stop_once)
    with pytest.raises(train_mod.Interrupted):
        train_mod.run(tiny_cfg(tmp_path / "graphed", QUIET))
    ckpt = torch.load(run_folder(tmp_path / "graphed") / "last.pt", weights_only=False)
    assert ckpt["iteration"] == 15 and isinstance(ckpt["opt"]["param_groups"][0]["lr"], float)
    s = train_mod.run(tiny_cfg(tmp_path / "graphed", QUIET))
    assert s["status"] == "completed" and s["cuda_graphs"] is True
    assert {kind for _, kind in seen} == {"Tensor"}  # every step read the lr as a tensor
    assert metrics(run_folder(tmp_path / "graphed")) == metrics(run_folder(tmp_path / "eager"))
    assert summary(run_folder(tmp_path / "graphed"))["final_train_loss"] == s["final_train_loss"]


# -- the GPU a tool and a run take -------------------------------------------------------------------------
def test_a_tools_device_is_indexed_and_refused_when_not_here(monkeypatch):
    """torch.cuda.set_device refuses a bare "cuda" (ValueError: Expected a torch.device with a specified
    index): a tool's --device resolves to an indexed one first, counting GPUs through NVML."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "_lazy_init", lambda: pytest.fail("resolving --device must not start CUDA"))
    assert [device_mod.tool_device(s) for s in ("auto", "cuda", "cuda:1")] == [torch.device("cuda", 0),
                                                                               torch.device("cuda", 0),
                                                                               torch.device("cuda", 1)]
    with pytest.raises(ValueError, match="only cuda:0 to cuda:1 are visible"):
        device_mod.tool_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert device_mod.tool_device("auto") == torch.device("cpu")
    for setting, message in (("cuda", "no CUDA GPU is visible"), ("mps", "no MPS"), ("nosuch", "is not a device"),
                             ("meta", "runs on cpu, cuda or mps only")):
        with pytest.raises(ValueError, match=message):
            device_mod.tool_device(setting)


@pytest.mark.parametrize("deterministic,benchmark", [(False, True), (True, False)])
def test_cudnn_autotuning_gives_way_to_determinism(monkeypatch, deterministic, benchmark):
    """gpu-check compares a killed-and-resumed run with an uninterrupted one on cuDNN's deterministic
    kernels: autotuning (benchmark) would time them afresh after the restart and may pick others."""
    _fake_gpu(monkeypatch, (9, 0))
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", deterministic)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", not benchmark)
    pick_device(OmegaConf.create({"device": "cuda", "precision": "auto", "channels_last": "auto", "compile": False,
                                  "cuda_graphs": False, "threads": 1}))
    assert torch.backends.cudnn.benchmark is benchmark


@pytest.mark.parametrize("gpus", [0, 1, 4])
def test_the_local_launcher_is_refused_where_it_cannot_place_runs_on_gpus(monkeypatch, gpus):
    """submitit's local executor starts every run at once with CUDA_VISIBLE_DEVICES from gpus_per_node:
    0 trains on the CPU under a CUDA estimate, 1 puts every run on GPU 0. Refused, naming joblib."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    argv = ["--exp", "quick", "--launcher", "local", "--dry-run"]
    if gpus == 0:  # a CPU machine (or CUDA_VISIBLE_DEVICES= on purpose): the submitit path as before
        assert sweep_launch.parse_args(argv).launcher == "local"
        return
    with pytest.raises(sweep_request.SweepError, match=f"LAUNCHER=local cannot give runs their own GPU .* "
                                               f"use LAUNCHER=joblib JOBS={gpus}$"):
        sweep_launch.parse_args(argv)


# -- a checkpoint resumes wherever it can: other GPU counts, other layouts, several compiled nets ---------
@pytest.mark.parametrize("saved,index,expected", [
    ([torch.full((4,), i, dtype=torch.uint8) for i in range(4)], 0, 0),  # begun where 4 GPUs were visible
    ([torch.full((4,), i, dtype=torch.uint8) for i in range(4)], 2, 2),
    ([torch.full((4,), 0, dtype=torch.uint8)], 3, None),                 # begun on one GPU, resumed on cuda:3
    (torch.full((4,), 7, dtype=torch.uint8), 1, 7),                     # as runs save it now: their own GPU's
])
def test_only_the_runs_own_gpu_generator_is_restored(monkeypatch, saved, index, expected):
    """set_rng_state_all indexed every saved state into this process's generators: a run begun where 4 GPUs
    were visible and resumed where 1 is raised IndexError, was called corrupt, and retrained from zero."""
    calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append((int(state[0]), device)))
    trainer_mod.restore_cuda_rng(saved, torch.device("cuda", index))
    assert calls == ([] if expected is None else [(expected, index)])


def test_a_gpu_generator_that_cannot_be_restored_never_makes_the_checkpoint_unusable(monkeypatch, capsys):
    def refuse(state, device):
        raise RuntimeError("invalid device ordinal")
    monkeypatch.setattr(torch.cuda, "set_rng_state", refuse)
    trainer_mod.restore_cuda_rng(torch.zeros(4, dtype=torch.uint8), torch.device("cuda", 0))  # no raise
    assert "CUDA generator state was not restored" in capsys.readouterr().err


def test_saved_momentum_takes_the_layout_of_the_parameters_it_resumes_into():
    """A checkpoint of contiguous parameters (MPS, channels_last=false) resumed with channels_last kept the
    saved strides; fused SGD requires buffers laid out like their parameters."""
    contiguous = build_from_config(OmegaConf.create({"arch": "resnet", "depth": 8, "shortcut": "A", "width": 4}))
    opt = torch.optim.SGD(contiguous.parameters(), lr=0.1, momentum=0.9)
    contiguous(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()
    saved = opt.state_dict()
    channels_last = build_from_config(OmegaConf.create({"arch": "resnet", "depth": 8, "shortcut": "A", "width": 4}))
    channels_last.load_state_dict(contiguous.state_dict())
    channels_last.to(memory_format=torch.channels_last)
    resumed = torch.optim.SGD(channels_last.parameters(), lr=0.1, momentum=0.9, fused=True)
    resumed.load_state_dict(saved)
    convs = [p for p in channels_last.parameters() if p.dim() == 4]
    assert any(resumed.state[p]["momentum_buffer"].stride() != p.stride() for p in convs)  # what went wrong
    trainer_mod.match_parameter_layout(resumed)
    assert all(resumed.state[p]["momentum_buffer"].stride() == p.stride() for p in channels_last.parameters())
    assert all(torch.equal(resumed.state[p]["momentum_buffer"], opt.state[q]["momentum_buffer"])
               for p, q in zip(channels_last.parameters(), contiguous.parameters()))
    channels_last(torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)).sum().backward()
    resumed.step()  # the fused kernel takes the matched buffers


def test_each_compiled_run_resets_dynamo_and_records_whether_it_compiled(tmp_path, monkeypatch):
    """The basic launcher trains a whole sweep in one process: without a reset Dynamo reaches its recompile
    limit and runs eager, while the summary said compiled. Here torch.compile stands in as a no-op, so no
    graph is made and the run must record compiled: false."""
    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(None))
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)
    for seed in (0, 1):
        done = train_mod.run(tiny_cfg(tmp_path, QUIET, "trainer.compile=true", "schedule.iterations=10",
                                      f"seed={seed}"))
        assert done["compiled"] is False
    assert len(resets) == 2
