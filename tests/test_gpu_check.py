"""`make gpu-check` on a CPU: every section runs or is skipped by name, the resume check holds exactly, and
one JSON records it all."""
from __future__ import annotations

import json

from experiments import gpu_check

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
    import torch
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
