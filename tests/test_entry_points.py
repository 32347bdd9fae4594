"""Every command a user types still finds its code, wherever in experiments/ the code lives: each documented
`python -m` entry point answers --help (one subprocess each), the Makefile runs only modules that exist, the
console scripts name callables, and the Hydra task function pickles by its name (joblib, SLURM)."""
import importlib
import importlib.util
import pickle
import re
import tomllib

import pytest

from experiments import train as train_mod
from tests.helpers import REPO, cli

# module -> what its --help must show: argparse's usage line names the command, Hydra's help its app
COMMANDS = {
    "experiments.train": "Powered by Hydra",
    "experiments.data": "Powered by Hydra",
    "experiments.sweep": "usage: python -m experiments.sweep",
    "experiments.bench": "usage: python -m experiments.bench",
    "experiments.gpu_check": "usage: python -m experiments.gpu_check",
    "experiments.evaluate": "usage:",
    "experiments.lesion": "usage: python -m experiments.lesion",
    "experiments.landscape": "usage: python -m experiments.landscape",
    "experiments.analyse_nets": "usage: python -m experiments.analyse_nets",
    "analysis.report": "usage:",
}


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_each_documented_command_answers_help(module):
    proc = cli("--help", module=module, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert COMMANDS[module] in proc.stdout, proc.stdout[-2000:]


def test_every_module_the_makefile_runs_exists_and_is_listed_here():
    run = set(re.findall(r"\$\(PY\) -m ((?:experiments|analysis)\.[\w.]+)", (REPO / "Makefile").read_text()))
    assert run and all(importlib.util.find_spec(m) is not None for m in run), run
    assert run <= set(COMMANDS), run - set(COMMANDS)


def test_the_console_scripts_name_callables():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, attr = target.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), name


def test_the_hydra_task_function_pickles_by_its_name():
    """joblib and submitit send the task to their workers pickled: experiments.train.main must stay there."""
    assert pickle.loads(pickle.dumps(train_mod.main)) is train_mod.main
