"""`make gpu-check` on a CPU: every section runs or is skipped by name, the resume check holds exactly, and
one JSON records it all."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from experiments.tools import gpu_check

ORDER = ["environment", "resume", "sync_audit", "profile", "bench", "sharing"]


def test_gpu_check_runs_on_a_cpu_and_names_what_it_skipped(tmp_path, capsys):
    out = tmp_path / "bench" / "gpu-check.json"
    assert gpu_check.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    sections = report["sections"]
    assert report["complete"] and report["order"] == ORDER and set(sections) == set(ORDER) and not report["failed"]
    assert {n for n, r in sections.items() if r["status"] == "skipped"} == {"sync_audit", "sharing"}
    assert all("needs CUDA" in sections[n]["reason"] for n in ("sync_audit", "sharing"))
    skipped = " | ".join(report["skipped"])
    for named in ("sync_audit", "sharing", "GPU-busy", "compile and cuda_graphs rows"):
        assert named in skipped
    env = sections["environment"]
    assert env["device"] == "cpu" and env["torch"] and isinstance(env["native_bf16"], bool)
    eager = sections["resume"]["eager"]  # killed by SIGKILL after its 2nd checkpoint, resumed, exact
    assert eager["ok"] and eager["killed_rc"] == -9 and eager["resumed_at_40"] and eager["vs_uninterrupted"]["identical"]
    assert sections["profile"]["runs"][0]["host_ms_per_step"] > 0
    rows = sections["bench"]["rows"]
    assert rows and all(r["suite_images_per_s"] > 0 and r["bound_images_per_s"] > 0 for r in rows)
    assert not any(r["compile"] or r["cuda_graphs"] for r in rows)
    assert "wrote" in capsys.readouterr().out


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(_ctx):
        raise RuntimeError("simulated failure")
    monkeypatch.setattr(gpu_check, "SECTIONS", [("broken", broken), ("environment", gpu_check.environment)])
    out = tmp_path / "check.json"
    assert gpu_check.main(["--quick", "--device", "cpu", "--out", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["failed"] == ["broken"] and "simulated failure" in report["sections"]["broken"]["error"]
    assert report["sections"]["environment"]["status"] == "ok"


def test_the_default_file_is_named_after_the_card():
    assert gpu_check.default_out(torch.device("cpu")).name.startswith("gpu-check-cpu-")
    assert gpu_check.slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_kernel_stats_count_overlapping_kernels_once():
    from types import SimpleNamespace as NS

    def kernel(name, start, end):
        return NS(name=name, time_range=NS(start=start, end=end, elapsed_us=lambda: end - start))
    # two steps: 'a' overlaps 'b' (a second stream), then a gap, then 'a' again
    events = [kernel("a", 0, 1000), kernel("b", 500, 1500), kernel("a", 3000, 4000)]
    stats = gpu_check.kernel_stats(events, steps=2)
    assert stats["kernels_per_step"] == 1.5 and stats["gpu_busy_ms_per_step"] == 1.25  # (1500 + 1000) us / 2
    assert stats["top_kernels"][0] == {"name": "a", "calls": 2, "ms_per_step": 1.0}


# -- the CUDA path, simulated: torch.cuda patched where the check would otherwise need a GPU ----------------
def _fake_cuda(monkeypatch, count=1, capability=(9, 0)):
    """A machine with `count` GPUs as far as the check asks: NVML's count, capability, name, properties;
    set_device's own index check runs (torch.cuda.set_device), only the driver call is recorded."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Simulated GPU")
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda *_: SimpleNamespace(total_memory=80 * 2**30, multi_processor_count=132))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch._C, "_cuda_setDevice", chosen.append, raising=False)
    return chosen


@pytest.mark.parametrize("device,count,index", [("auto", 1, 0), ("cuda", 2, 0), ("cuda:1", 2, 1)])
def test_the_check_sets_an_indexed_device_before_its_first_section(tmp_path, monkeypatch, device, count, index):
    """torch.cuda.set_device(torch.device("cuda")) raises ValueError (no index): the default
    `make gpu-check` died on every GPU before it wrote its JSON."""
    chosen = _fake_cuda(monkeypatch, count)
    monkeypatch.setattr(gpu_check, "SECTIONS", [("where", lambda ctx: {"device": str(ctx.dev)})])
    out = tmp_path / "check.json"
    assert gpu_check.main(["--device", device, "--out", str(out)]) == 0
    assert chosen == [index]
    assert json.loads(out.read_text())["sections"]["where"]["device"] == f"cuda:{index}"


@pytest.mark.parametrize("argv,needle", [
    (["--device", "nosuch"], "--device 'nosuch' is not a device; use auto, cpu"),
    (["--device", "mps"], "no MPS (Apple GPU); use --device auto or cpu"),  # it ran anyway before
    (["--device", "cuda"], "no CUDA GPU is visible here; use --device auto or cpu"),
    (["--out", "afile/check.json"], "afile is a file, not a folder); pass --out"),
    (["--out", "afile/sub/check.json"], "afile is a file, not a folder); pass --out"),
    (["--budget-s", "0"], "positive number of seconds"),
    (["--device", "cpu"], "results is a file, not a folder"),  # the default --out, under a file
])
def test_bad_arguments_are_one_line_exit_2_and_write_nothing(tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "SECTIONS", [])  # on a mistake let through, the check ends at once
    (tmp_path / "afile").write_text("a file\n")
    (tmp_path / "results").write_text("a file where the default results/bench/ would go\n")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as e:
        sys.exit(gpu_check.main(argv))
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert sorted(tmp_path.rglob("*")) == before


def test_every_child_process_runs_on_the_checks_gpu(tmp_path, monkeypatch):
    """--device cuda:1 with CUDA_VISIBLE_DEVICES=3,5: the killed run and the sharing benchmarks see GPU 5
    only; before, they took GPU 0 (3). The sharing pair meets at one barrier and times >= 20 s."""
    _fake_cuda(monkeypatch, count=2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    dev = torch.device("cuda", 1)
    calls = []

    def fake_run(cmd, env, **_):
        calls.append((cmd, env))
        return subprocess.CompletedProcess(cmd, 1, "", "Traceback ...\nValueError: what went wrong\n")
    monkeypatch.setattr(gpu_check.subprocess, "run", fake_run)
    rc, tail = gpu_check._killed_run(tmp_path / "cut", ["model=resnet"], "after:checkpoint:2", dev)
    (cmd, env), = calls
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and env["SUITE_FAULT"] == "after:checkpoint:2"
    assert "cudnn.deterministic = True" in " ".join(cmd)  # the child computes as the runs it is compared with
    assert rc == 1 and tail.endswith("ValueError: what went wrong\n")  # why it was not killed: kept

    class FakeBench:  # a bench process: writes its JSON at once
        def __init__(self, cmd, env, **_):
            calls.append((cmd, env))
            out = Path(cmd[cmd.index("--out") + 1])
            out.write_text(json.dumps({"rows": [{"suite_images_per_s": 900.0 if "alone" in out.name else 500.0}]}))

        def wait(self, timeout):
            return 0
    calls.clear()
    monkeypatch.setattr(gpu_check.subprocess, "Popen", FakeBench)
    ctx = SimpleNamespace(dev=dev, precision="bf16", num_train=10_000, threads=16, tmp=tmp_path)
    result = gpu_check.sharing(ctx)
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in calls] == ["5", "5", "5"]
    opt = [dict(zip(cmd, cmd[1:])) for cmd, _ in calls]  # each flag with its value
    assert all(o["--device"] == "cuda" and float(o["--window-s"]) >= 20 for o in opt)
    assert [o["--parties"] for o in opt] == ["1", "2", "2"] and opt[1]["--sync-start"] == opt[2]["--sync-start"]
    assert opt[0]["--sync-start"] != opt[1]["--sync-start"]
    assert result["total_vs_alone"] == round(1000 / 900, 3)


def test_the_environment_reports_what_convolutions_compute_in(monkeypatch):
    """cudnn.conv.fp32_precision alone said "none" while TF32 was on through allow_tf32."""
    _fake_cuda(monkeypatch)
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 91000)
    monkeypatch.setattr(gpu_check, "nvml_driver_version", lambda: "570.124.06")
    monkeypatch.setattr(gpu_check, "nvml_compute_capabilities", lambda: [(9, 0)])
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    env = gpu_check.environment(SimpleNamespace(dev=torch.device("cuda", 0)))
    assert env["tf32_convolutions"] is True and env["driver"] == "570.124.06" and env["device"] == "cuda:0"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert gpu_check.environment(SimpleNamespace(dev=torch.device("cuda", 0)))["tf32_convolutions"] is False


# -- bench rows: an error outside torch.compile fails the section ------------------------------------------
def _rows_ctx(tmp_path, dev):
    return SimpleNamespace(dev=dev, quick=True, threads=1, num_train=256, precision="fp32", tmp=tmp_path,
                           left=lambda: 1e9)


def _bench_row_failing(when):
    def bench_row(arch, depth, precision, args, pipelines, compile=False, cuda_graphs=False):
        if when(compile, cuda_graphs):
            raise RuntimeError("simulated failure")
        return {"model": f"{arch}-{depth}", "precision": precision, "compile": compile, "cuda_graphs": cuda_graphs,
                "suite_images_per_s": 1.0, "bound_images_per_s": 1.0}
    return bench_row


def test_an_eager_bench_row_that_raises_fails_the_section(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check.bench, "bench_row", _bench_row_failing(lambda compile, graphs: True))
    monkeypatch.setattr(gpu_check, "SECTIONS", [("bench", gpu_check.bench_rows)])
    out = tmp_path / "check.json"
    assert gpu_check.main(["--quick", "--device", "cpu", "--out", str(out)]) == 1
    section = json.loads(out.read_text())["sections"]["bench"]
    assert section["status"] == "failed" and "simulated failure" in section["error"]
    assert section["rows"] and all("error" in r for r in section["rows"])  # what it measured is kept


def test_on_cuda_only_compile_rows_may_fail_as_a_result(tmp_path, monkeypatch):
    _fake_cuda(monkeypatch, capability=(7, 5))  # fp32 rows only
    ctx = _rows_ctx(tmp_path, torch.device("cuda", 0))
    monkeypatch.setattr(gpu_check.bench, "bench_row", _bench_row_failing(lambda compile, graphs: compile))
    rows = gpu_check.bench_rows(ctx)["rows"]
    assert [("error" in r, bool(r.get("compile"))) for r in rows] == [(False, False), (False, False),
                                                                       (True, True), (True, True)]
    monkeypatch.setattr(gpu_check.bench, "bench_row", _bench_row_failing(lambda compile, graphs: graphs))
    with pytest.raises(gpu_check.SectionFailed, match="resnet-8 fp32 cuda_graphs: RuntimeError: simulated") as e:
        gpu_check.bench_rows(ctx)
    assert len(e.value.result["rows"]) == 4


# -- resume on CUDA: deterministic kernels, identical curves, the graph held to the eager run ----------------
def _curve(shift: float = 0.0) -> list[dict]:
    return [{"iter": i, "train_loss": 2.0 - i / 100 + shift, "test_loss": 2.1 - i / 100, "train_err": 50.0,
             "test_err": 55.0} for i in (20, 40, 60)]


def _simulated_resume(tmp_path, monkeypatch, curves: dict):
    """resume() on a simulated GPU: the runs return `curves` by folder name (ref, cut, noise)."""
    _fake_cuda(monkeypatch)
    seen = []

    def run_here(results, overrides):
        seen.append(torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark)
        return {"status": "completed"}, "resuming from last.pt at iteration 40" if results.name == "cut" else ""

    def rows(results):
        return curves[f"{results.parent.name}/{results.name}"]
    monkeypatch.setattr(gpu_check, "_run_here", run_here)
    monkeypatch.setattr(gpu_check, "_rows", rows)
    monkeypatch.setattr(gpu_check, "_killed_run", lambda *a, **k: (-9, ""))
    ctx = SimpleNamespace(dev=torch.device("cuda", 0), tmp=tmp_path)
    return ctx, seen


def test_a_cuda_resume_must_match_exactly_when_the_runs_are_deterministic(tmp_path, monkeypatch):
    same = {"resume-eager/ref": _curve(), "resume-eager/cut": _curve(), "resume-cuda_graphs/ref": _curve(),
            "resume-cuda_graphs/cut": _curve(), f"{tmp_path.name}/resume-noise": _curve()}
    ctx, seen = _simulated_resume(tmp_path, monkeypatch, same)
    out = gpu_check.resume(ctx)
    assert out["eager"]["ok"] and out["cuda_graphs"]["ok"] and out["cuda_graphs_vs_eager"]["ok"]
    assert seen and all(seen)  # every run in this process with cuDNN's deterministic kernels, no autotuning
    # A graph that baked in the lr drifts by far less than the old 5 % tolerance: now it fails the check.
    ctx, _ = _simulated_resume(tmp_path, monkeypatch, same | {"resume-cuda_graphs/ref": _curve(0.01),
                                                              "resume-cuda_graphs/cut": _curve(0.01)})
    with pytest.raises(gpu_check.SectionFailed, match="cuda_graphs_vs_eager") as e:
        gpu_check.resume(ctx)
    assert e.value.result["cuda_graphs"]["ok"] and not e.value.result["cuda_graphs_vs_eager"]["ok"]


def test_run_to_run_noise_sets_the_tolerance_where_it_is_not_zero():
    def cmp(a, b):
        return gpu_check._compare(a, b)
    noise = cmp(_curve(0.02), _curve())
    assert gpu_check.close_enough(cmp(_curve(0.03), _curve()), noise)       # within 2x the noise
    assert not gpu_check.close_enough(cmp(_curve(0.05), _curve()), noise)   # beyond it
    assert not gpu_check.close_enough(cmp(_curve(1e-6), _curve()), cmp(_curve(), _curve()))  # zero noise: exact
    assert not gpu_check.close_enough(cmp(_curve()[:2], _curve()), None)    # missing points
