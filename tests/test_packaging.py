"""`pip install .` gives a working suite away from the checkout: the Hydra configs travel inside the package,
the console entry points exist, and Hydra's tab completion answers for the training entry point."""
import configparser
import os
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
    assert dict(scripts["console_scripts"]) == {"degradation-sweep": "experiments.sweep:main",
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
