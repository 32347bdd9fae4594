"""`pip install .` gives a working suite away from the checkout: the Hydra configs travel inside the package,
the console entry points exist, and Hydra's tab completion answers for the training entry point."""
import configparser
import os
import re
import shutil
import subprocess
import sys
import zipfile

from tests.helpers import REPO


def test_the_wheel_carries_the_configs_and_runs_a_sweep_plan_from_any_folder(tmp_path):
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    for part in ("experiments", "analysis", "conf"):
        shutil.copytree(REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", src)
    # no build isolation: the suite's own setuptools builds it, offline
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")  # what pip install does, minus the scripts
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        scripts = configparser.ConfigParser()
        scripts.read_string(zf.read(entry_points).decode())
    conf = {str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    assert {f"experiments/conf/{c}" for c in conf} <= names
    # every module of the source tree, its subpackages' too ([tool.setuptools] packages lists each one)
    assert {str(p.relative_to(REPO)) for p in (REPO / "experiments").rglob("*.py")} <= names
    assert dict(scripts["console_scripts"]) == {"degradation-sweep": "experiments.sweep.launch:main",
                                                "degradation-report": "analysis.report:main",
                                                "degradation-train": "experiments.train:main"}
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "OMP_NUM_THREADS": "1"}
    where = subprocess.run([sys.executable, "-c", "import experiments; print(experiments.CONF)"], cwd=away, env=env,
                           capture_output=True, text=True)
    assert where.stdout.strip() == str(tmp_path / "site" / "experiments" / "conf")
    plan = subprocess.run([sys.executable, "-m", "experiments.sweep", "--exp", "smoke", "--data", "fake",
                           "--results", "out", "--dry-run"], cwd=away, env=env, capture_output=True, text=True)
    assert plan.returncode == 0 and "sweep smoke: 2 runs" in plan.stdout, plan.stderr


def test_hydra_tab_completion_answers_for_the_training_entry_point():
    env = {**os.environ, "COMP_LINE": "degradation-train experiment=", "COMP_POINT": "29"}
    done = subprocess.run([sys.executable, "-m", "experiments.train", "-sc", "query=bash"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert "experiment=quick" in done.stdout.split() and "experiment=smoke" in done.stdout.split(), done.stderr


def test_the_installed_metadata_caps_neither_torch_nor_torchvision():
    """A user's own PyTorch, newer than any release this suite has seen, satisfies what the suite's installed
    metadata asks: `pip install -e .` keeps it, never downgrades it. Read with -P, as `make ... PY=` reads it: the
    installed metadata, not the checkout's egg-info."""
    import json
    import tomllib

    from packaging.requirements import Requirement
    read = ("import importlib.metadata as m, json; "
            "print(json.dumps(m.distribution('degradation-suite').requires or []))")
    done = subprocess.run([sys.executable, "-P", "-c", read], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    reqs = {r.name: r for r in map(Requirement, json.loads(done.stdout)) if r.marker is None}
    for name in ("torch", "torchvision"):
        spec = reqs[name].specifier
        assert spec.contains("99.0") and [s.operator for s in spec] == [">="], \
            f"the installed suite asks for {reqs[name]}: a lower bound only, or pip downgrades a user's {name}"
    # and pyproject.toml states each as `name>=X.Y`, the form `make test-compat` reads its lowest versions from
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sum(bool(re.fullmatch(r"torch(vision)?>=[0-9.]+", d)) for d in deps) == 2, deps


def test_make_with_a_python_of_ones_own_never_touches_dot_venv(tmp_path):
    """`make test PY=...` (and every other target) runs that Python alone: no .venv is built or read, and no
    other Python is started. A copy of the Makefile with no .venv beside it; PY records what it is asked to run;
    a python3 first on PATH, which `make setup` would call, trips the test."""
    work, bin_ = tmp_path / "clone", tmp_path / "bin"
    work.mkdir()
    bin_.mkdir()
    for name in ("Makefile", "pyproject.toml", "dev-constraints.txt"):
        shutil.copy(REPO / name, work)
    log = tmp_path / "calls"
    py = bin_ / "my-python"
    py.write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n')
    (bin_ / "python3").write_text(f'#!/bin/sh\necho "TRIPWIRE python3 $*" >> "{log}"\nexit 1\n')
    for f in (py, bin_ / "python3"):
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    env["PATH"] = f"{bin_}{os.pathsep}{env['PATH']}"
    # every target that runs the suite's Python (a $(READY) prerequisite), the tests first
    targets = re.findall(r"^([a-z-]+): \$\(READY\)", (REPO / "Makefile").read_text(), re.M)
    assert {"test", "test-all", "sweep", "report", "gpu-check"} <= set(targets), targets
    for target in targets:
        log.unlink(missing_ok=True)
        done = subprocess.run(["make", "--no-print-directory", target, f"PY={py}"], cwd=work, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (target, done.stderr)
        calls = log.read_text().splitlines()
        assert len(calls) == 2 and calls[0].startswith("-P -c import importlib.metadata"), (target, calls)
        assert calls[1].startswith("-m pytest" if target.startswith("test") else "-m "), (target, calls)
    assert not (work / ".venv").exists() and sorted(p.name for p in work.iterdir()) == \
        ["Makefile", "dev-constraints.txt", "pyproject.toml"]
