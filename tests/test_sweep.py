import json
import re

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments import device as device_mod
from experiments.sweep import launch as sweep_launch
from experiments.sweep import plan as sweep_plan
from experiments.sweep import request as sweep_request
from experiments.sweep import status as sweep_status
from tests.helpers import REPO, cli, metrics, run_folder, smoke_cfg, summary

EXPECTED = {
    "smoke": ["plain-8-none", "resnet-8-A"],
    "quick": ["plain-20-none", "plain-56-none", "resnet-20-A", "resnet-56-A"],
    "degradation": [f"{a}-{d}-{s}" for a, s in (("plain", "none"), ("resnet", "A")) for d in (20, 32, 44, 56, 110)],
    "shortcuts": [f"{a}-{d}-{s}" for a, s in (("plain", "none"), ("resnet", "A"), ("resnet", "B"), ("resnet", "C"))
                  for d in (20, 56, 110)],
    "imagenet_style": ["plain-18-none", "plain-34-none", "resnet-18-A", "resnet-34-A"],
    "preact": [f"{a}-{d}-A" for a in ("resnet", "preact") for d in (56, 110)],
    "shortcuts_quick": [f"resnet-{d}-{s}" for s in "ABC" for d in (20, 56)],
    "degradation_16k": [f"{a}-{d}-{s}" for a, s in (("plain", "none"), ("resnet", "A")) for d in (20, 56)],
}


def planned(exp: str, seeds: int = 1, *extra: str):
    args = sweep_launch.parse_args(["--exp", exp, "--seeds", str(seeds), "--results", "/nonexistent-results", *extra])
    return sweep_plan.plan(args)


def test_every_experiment_file_is_covered_here():
    assert sorted(EXPECTED) == sweep_launch.experiments()


@pytest.mark.parametrize("exp", sorted(EXPECTED))
@pytest.mark.parametrize("seeds", [1, 3])
def test_each_sweep_expands_to_exactly_its_runs(exp, seeds):
    runs = planned(exp, seeds)
    names = sorted((r.folder.parent.name, r.folder.name) for r in runs)
    assert names == sorted((n, f"seed={s}") for n in EXPECTED[exp] for s in range(seeds))
    assert all(r.status == "to do" for r in runs)


def test_paper_experiments_use_the_paper_recipe():
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        for exp in ("degradation", "shortcuts"):
            cfg = compose("config", overrides=[f"experiment={exp}"])
            assert (cfg.schedule.iterations, cfg.optim.lr, cfg.optim.batch_size) == (64000, 0.1, 128)
            assert (cfg.optim.weight_decay, cfg.optim.momentum, cfg.data.source) == (1e-4, 0.9, "cifar10")
        quick = compose("config", overrides=["experiment=quick"])
        assert quick.schedule.iterations == 2000 and quick.optim.batch_size == 128 and quick.data.train_subset is None
        from experiments.run.schedule import LrSchedule
        for exp, iterations, drops in (("shortcuts_quick", 2000, (1000, 1500)), ("degradation_16k", 16000, (8000, 12000))):
            cfg = compose("config", overrides=[f"experiment={exp}"])
            assert (cfg.schedule.iterations, cfg.optim.lr, cfg.optim.batch_size) == (iterations, 0.1, 128), exp
            assert LrSchedule.from_config(cfg.optim, cfg.schedule, 56).milestones == drops, exp


def test_slurm_and_local_launchers_compose():
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        for launcher in ("slurm", "local"):
            cfg = compose("config", overrides=["experiment=smoke", f"hydra/launcher={launcher}"],
                          return_hydra_config=True)
            assert "submitit" in cfg.hydra.launcher._target_
        assert compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher.gpus_per_node == 1


@pytest.mark.parametrize("argv,needle", [
    (["--exp", "nope"], "no experiment 'nope'; choose one of"),
    (["--seeds", "0"], "SEEDS must be at least 1"),
    (["--launcher", "joblib", "--jobs", "999"], "JOBS=999 must be between 1 and"),
    (["--launcher", "pbs"], "unknown LAUNCHER 'pbs'"),
])
def test_bad_sweep_requests_are_one_clear_line(argv, needle, capsys):
    assert sweep_launch.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_results_pointing_at_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("")
    assert sweep_launch.main(["--exp", "smoke", "--results", str(target), "--dry-run"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def smoke(results, *extra, env=None):
    return cli("--exp", "smoke", "--results", str(results), *extra, env=env, module="experiments.sweep")


def assert_same_metrics_as_uninterrupted(results, smoke_root):
    """Every smoke run in `results` computed what the serial, uninterrupted smoke sweep did."""
    for name in EXPECTED["smoke"]:
        got, want = (metrics(run_folder(r, name, exp="smoke")) for r in (results, smoke_root))
        assert got == want, name


def test_joblib_two_jobs_match_serial(tmp_path, smoke_root):
    parallel = smoke(tmp_path, "--launcher", "joblib", "--jobs", "2")
    assert parallel.returncode == 0, parallel.stderr
    assert_same_metrics_as_uninterrupted(tmp_path, smoke_root)


def test_the_slurm_code_path_runs_through_submitits_local_executor(tmp_path, smoke_root):
    local = smoke(tmp_path, "--launcher", "local")
    assert local.returncode == 0, local.stderr
    assert list((tmp_path / "smoke" / ".submitit").iterdir())  # submitit really ran the jobs
    assert_same_metrics_as_uninterrupted(tmp_path, smoke_root)


def test_launcher_settings_can_be_refined_on_the_command_line(capsys):
    argv = ["--exp", "smoke", "--launcher", "slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=60"]
    assert sweep_launch.main([*argv, "--dry-run"]) == 0
    assert "2 runs" in capsys.readouterr().out
    # What Hydra would launch every job with: the slurm launcher, refined by ARGS, not its defaults.
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        jobs = sweep_request.expand(sweep_launch.parse_args(argv))
        launchers = [compose("config", overrides=job, return_hydra_config=True).hydra.launcher for job in jobs]
    assert len(launchers) == 2
    assert all(l._target_.endswith("SlurmLauncher") and l.partition == "gpu" and l.timeout_min == 60
               for l in launchers)


# -- ARGS: every Hydra override, as Hydra's own sweeper reads it ------------------------------------------

def test_hydra_sweep_combines_overrides_as_hydras_basic_sweeper():
    # Pins the private API request.hydra_sweep relies on: a product of the comma lists in first-seen key order,
    # a later value of a key replacing the earlier one in place (the command line over the experiment's params).
    jobs = sweep_request.hydra_sweep(["model=plain,resnet", "model.depth=20,56", "seed=0", "data=fake",
                                      "model.depth=8,14", "seed=3"])
    assert jobs == [[f"model={m}", f"model.depth={d}", "seed=3", "data=fake"]
                    for m in ("plain", "resnet") for d in (8, 14)]


def test_args_comma_list_and_seed_are_swept_exactly_as_planned(tmp_path):
    # The plan (this wrapper's expansion) and the runs Hydra trains are the same four folders.
    done = smoke(tmp_path, "model.depth=8,14", "seed=3", "schedule.iterations=10")  # what runs, not how well
    assert done.returncode == 0, done.stderr
    assert "seeds from ARGS (seed=3) replace SEEDS=1" in done.stdout
    planned_runs = {str(f.relative_to(tmp_path)) for f in (tmp_path / "smoke" / "runs").glob("*/*")}
    assert planned_runs == {f"smoke/runs/{n}-{d}-{s}/seed=3" for n, s in (("plain", "none"), ("resnet", "A"))
                            for d in (8, 14)}
    assert all(summary(tmp_path / r)["status"] == "completed" for r in planned_runs)


@pytest.mark.parametrize("seeds", ["seed=5,7", "seed=range(5,9,2)"])
def test_seed_list_in_args_replaces_seeds(seeds):
    runs = planned("smoke", 2, seeds)
    assert sorted(r.folder.name for r in runs) == ["seed=5", "seed=5", "seed=7", "seed=7"]


def test_args_glob_lists_config_groups_as_hydra_does():
    runs = planned("smoke", 1, "model=glob(resnet_*)", "model.depth=8")
    assert sorted(r.folder.parent.name for r in runs) == ["resnet-8-B", "resnet-8-C"]


def test_experiment_without_dash_m_runs_its_whole_sweep(tmp_path):
    done = cli("experiment=smoke", f"results_dir={tmp_path}", "schedule.iterations=10")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "smoke" / "runs").iterdir()) == ["plain-8-none", "resnet-8-A"]


def test_every_experiment_file_is_a_multirun():
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        for exp in sweep_launch.experiments():
            cfg = compose("config", overrides=[f"experiment={exp}"], return_hydra_config=True)
            assert str(cfg.hydra.mode) == "RunMode.MULTIRUN", exp
        assert compose("config", return_hydra_config=True).hydra.mode is None  # a single run stays single


# -- offline: the data source is checked once, before any run ---------------------------------------------

def test_offline_default_data_is_one_line_before_any_run(tmp_path, monkeypatch, capsys):
    import torchvision.datasets

    def offline(*_a, **_k):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)  # what torchvision does offline
    monkeypatch.chdir(tmp_path)
    assert sweep_launch.main(["--exp", "smoke", "--data", "cifar10", "--results", "out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DATA=cifar10_folder DATA_ROOT=" in err[0] and "by hand" in err[0]
    assert list(tmp_path.iterdir()) == []  # no results, no empty data/ folder


# -- time estimates: the run's precision, a benchmark of this device, found beside --results -----------------

def test_estimates_use_a_matching_benchmark_beside_results(tmp_path, capsys):
    rate = 100.0  # GMAC x images/s
    row = {"device": "cpu", "precision": "fp32", "suite_images_per_s": rate / 0.5, "macs": 500_000_000}
    bench = {**sweep_status.this_device("cpu"), "rows": [row]}
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "latest.json").write_text(json.dumps(bench))
    args_list = ["--exp", "smoke", "--results", str(tmp_path), "trainer.precision=fp32"]
    args = sweep_launch.parse_args(args_list)
    runs = sweep_plan.plan(args)
    rates, used = sweep_status.calibration(str(tmp_path), "cpu")
    assert used == (tmp_path / "bench" / "latest.json").resolve() and rates == {"fp32": rate}
    assert runs[0].device == "cpu"
    assert sweep_status.estimate_seconds(runs[0], rates) == pytest.approx(runs[0].images * runs[0].macs / 1e9 / rate)
    # a begun run is estimated for what it has left, read from its curve's last point
    runs[0].folder.mkdir(parents=True)
    (runs[0].folder / "last.pt").write_bytes(b"")
    (runs[0].folder / "metrics.jsonl").write_text(json.dumps({"format_version": 1, "iter": 30}) + "\n")
    begun = sweep_plan.plan(args)[0]
    assert (begun.status, begun.done) == ("partial", 30) and begun.iterations == 40
    assert sweep_status.estimate_seconds(begun, rates) == pytest.approx(runs[0].images / 4 * runs[0].macs / 1e9 / rate)
    # starts over: all of it
    restarted = sweep_plan.plan(sweep_launch.parse_args([*args_list, "trainer.resume=false"]))[0]
    assert restarted.done == 0
    # a benchmark of another machine is never used
    (tmp_path / "bench" / "latest.json").write_text(json.dumps({**bench, "device_name": "Some Other CPU"}))
    assert sweep_status.calibration(str(tmp_path), "cpu")[1] != (tmp_path / "bench" / "latest.json").resolve()
    # nor one of a CPU of the same name with (or without) native bf16: the project's VM has been both, 4.5x apart
    (tmp_path / "bench" / "latest.json").write_text(json.dumps({**bench, "native_bf16": not bench["native_bf16"]}))
    assert sweep_status.calibration(str(tmp_path), "cpu")[1] != (tmp_path / "bench" / "latest.json").resolve()
    # nor one at another kernel level; one written before benchmarks recorded it is matched on the rest
    (tmp_path / "bench" / "latest.json").write_text(json.dumps({**bench, "cpu_capability": "AVX512"
                                                                if bench["cpu_capability"] != "AVX512" else "AVX2"}))
    assert sweep_status.calibration(str(tmp_path), "cpu")[1] != (tmp_path / "bench" / "latest.json").resolve()
    (tmp_path / "bench" / "latest.json").write_text(json.dumps({k: v for k, v in bench.items() if k != "cpu_capability"}))
    assert sweep_status.calibration(str(tmp_path), "cpu")[1] == (tmp_path / "bench" / "latest.json").resolve()
    # nor one of torch.compile'd steps (`bench --compile`): 10 % slower on this project's AVX2 VM (ResNet-20 fp32)
    (tmp_path / "bench" / "latest.json").write_text(json.dumps({**bench, "compile": True}))
    assert sweep_status.calibration(str(tmp_path), "cpu")[1] != (tmp_path / "bench" / "latest.json").resolve()


def test_a_precision_the_benchmark_did_not_measure_gets_no_estimate(tmp_path, capsys):
    # This machine's benchmark has fp32 rows only, as `make bench` writes on a CPU without native bf16;
    # a bf16 run there is emulated, far slower: no rate of another precision may stand in for it.
    row = {"device": "cpu", "precision": "fp32", "suite_images_per_s": 200.0, "macs": 500_000_000}
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "latest.json").write_text(json.dumps({**sweep_status.this_device("cpu"), "rows": [row]}))
    args = sweep_launch.parse_args(["--exp", "smoke", "--results", str(tmp_path), "trainer.precision=bf16"])
    runs = sweep_plan.plan(args)
    assert {r.precision for r in runs} == {"bf16"}
    assert sweep_status.estimate_seconds(runs[0], sweep_status.calibration(str(tmp_path), "cpu")[0]) is None
    sweep_status.print_plan(runs, args)
    out = capsys.readouterr().out
    assert "(one job at a time): unknown (the benchmark of this device has no bf16 rows; `make bench` skips" in out
    assert not re.search(r"PMAC, ", out)  # no run line shows a duration
    # where the device has no benchmark at all, the rough fallback still gives a labelled estimate
    assert sweep_status.estimate_seconds(runs[0], {}) > 0


def test_a_sweep_resumed_on_another_kind_of_machine_says_its_precisions_would_mix(tmp_path, capsys):
    # The first run finished in bf16 elsewhere; smoke's runs compute in fp32 here.
    args = sweep_launch.parse_args(["--exp", "smoke", "--results", str(tmp_path)])
    folder = sweep_plan.plan(args)[0].folder
    folder.mkdir(parents=True)
    # its config as the run wrote it (the plan now compares it with the recipe asked for), with bf16 recorded
    recorded = OmegaConf.to_container(smoke_cfg(tmp_path, folder.parent.name.split("-")[0]), resolve=True)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml({**recorded, "trainer": {**recorded["trainer"],
                                                                                  "precision_used": "bf16"}}))
    (folder / "summary.json").write_text(json.dumps({"status": "completed"}))
    runs = sweep_plan.plan(args)
    assert [(r.status, r.precision) for r in runs] == [("completed", "bf16"), ("to do", "fp32")]
    sweep_status.print_plan(runs, args)
    out = capsys.readouterr().out
    assert "1 finished run computed in bf16, 1 to train will compute in fp32 here" in out
    assert "ARGS=trainer.precision=bf16" in out
    # one precision throughout: no note
    (folder / "config.yaml").write_text(OmegaConf.to_yaml({**recorded, "trainer": {**recorded["trainer"],
                                                                                  "precision_used": "fp32"}}))
    sweep_status.print_plan(sweep_plan.plan(args), args)
    assert "mix precisions" not in capsys.readouterr().out


def test_the_planner_resolves_each_runs_device_and_precision_as_the_run_will(monkeypatch, capsys):
    # An Apple MPS machine: quick's runs train on mps, in fp32 (`fast` has no native bf16 there), and with no
    # benchmark of it the estimate says so instead of borrowing another device's rate.
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    args = sweep_launch.parse_args(["--exp", "quick", "--results", "/nonexistent-results"])
    runs = sweep_plan.plan(args)
    assert {(r.device, r.precision) for r in runs} == {("mps", "fp32")}
    sweep_status.print_plan(runs, args)
    assert "estimated time on mps (one job at a time): unknown (no benchmark" in capsys.readouterr().out
    # A GPU machine: smoke pins trainer.device=cpu, so its runs are planned on the CPU in fp32, quick's on the GPU.
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(device_mod, "nvml_compute_capabilities", lambda: [(9, 0)])
    assert {(r.device, r.precision) for r in planned("smoke")} == {("cpu", "fp32")}
    assert {(r.device, r.precision) for r in planned("quick")} == {("cuda", "bf16")}


def test_degradation_estimate_agrees_with_the_readme(tmp_path, capsys, monkeypatch):
    # On the machine of the committed benchmark, the dry run and README quote the same hours.
    bench = json.loads((REPO / "results" / "reference" / "bench" / "cpu-2core-epyc.json").read_text())
    monkeypatch.setattr(sweep_status, "this_device",
                        lambda _: {k: bench[k] for k in ("device", "device_name", "threads", "native_bf16")})
    monkeypatch.setattr(device_mod, "detect_device_type", lambda: "cpu")
    assert sweep_launch.main(["--exp", "degradation", "--results", str(tmp_path), "--dry-run"]) == 0
    hours = re.search(r"one job at a time\): ~([\d.]+) h \(calibrated by", capsys.readouterr().out)
    readme = re.search(r"~(\d+) h on the 2-core CPU \(fp32, from `make bench`", (REPO / "README.md").read_text())
    assert hours and readme and round(float(hours.group(1))) == int(readme.group(1))


def test_make_help_explains_every_variable():
    import subprocess
    names = re.findall(r"^([A-Z_]+) \?=", (REPO / "Makefile").read_text(), re.M)
    shown = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert {"EXP", "SEEDS", "DATA", "DATA_ROOT", "RESULTS", "LAUNCHER", "JOBS", "DRY", "ARGS"} <= set(names)
    for name in names:
        line = next((l for l in shown.splitlines() if l.split()[:1] == [name]), "")
        assert len(line.split()) > 3, f"make help does not explain {name}"


def test_a_python_of_your_own_is_used_as_it_is_and_checked_first(tmp_path):
    import subprocess
    import sys
    # a Python with the suite installed (the test's own, by another name than the default): no .venv is built
    ok = subprocess.run(["make", "-s", "sweep", f"PY={sys.executable}", "EXP=smoke", "DRY=1", f"RESULTS={tmp_path}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and "sweep smoke: 2 runs" in ok.stdout, ok.stderr
    # one without it: one line that says how to install it, exit 2, nothing run
    bare = tmp_path / "bare-python"
    bare.write_text("#!/bin/sh\nexit 1\n")
    bare.chmod(0o755)
    bad = subprocess.run(["make", "-s", "sweep", f"PY={bare}", "EXP=smoke", f"RESULTS={tmp_path}"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stdout == "" and not (tmp_path / "smoke").exists()
    assert bad.stderr.splitlines()[0] == (f"error: PY={bare} lacks the suite or a package it needs; install them "
                                          f"with '{bare} -m pip install -e .[test]', or leave PY unset to use .venv "
                                          "(make setup)")


def test_readme_gives_the_exact_command_of_every_committed_reference():
    # Each committed sweep recorded what Hydra was handed (multirun.yaml); a README `make sweep` line must
    # hand it exactly that (seeds, data, results folder), so anyone can reproduce the reference.
    import shlex

    import yaml
    lines = re.findall(r"^\s*make sweep (.+?)\s*$", (REPO / "README.md").read_text(), re.M)
    commands = [dict(w.split("=", 1) for w in shlex.split(line) if "=" in w) for line in lines]
    references = sorted((REPO / "results" / "reference").glob("*/multirun.yaml"))
    assert references
    for multirun in references:
        recorded = yaml.safe_load(multirun.read_text())["hydra"]["overrides"]["task"]
        results = str(multirun.parents[1].relative_to(REPO))
        want = [c for c in commands if c.get("RESULTS") == results and f"experiment={c.get('EXP')}" in recorded]
        assert want, f"README has no `make sweep ... RESULTS={results}` line for {multirun.parent.name}"
        v = want[0]
        argv = ["--exp", v["EXP"], "--seeds", v.get("SEEDS", "1"), "--results", results,
                *(["--data", v["DATA"]] if "DATA" in v else []), *(["--data-root", v["DATA_ROOT"]] if "DATA_ROOT" in v else []),
                *shlex.split(v.get("ARGS", ""))]
        assert sweep_request.base_overrides(sweep_launch.parse_args(argv)) == recorded, multirun.parent.name
