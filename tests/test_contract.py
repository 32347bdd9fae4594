"""experiments/contract.py, the one owner of the results format: run names and their parsing, the
tolerant metrics reader both sides share, atomic writes, and analysis running where torch is absent."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import contract as C
from tests.helpers import REPO
from tests.test_analysis import write_sweep


# ---------------------------------------------------------------- names

@pytest.mark.parametrize("arch,shortcut", [("plain", "A"), ("resnet", "A"), ("preact", "C"), ("resnet34", "B"),
                                           ("plain50", "none"), ("resnet152", "C")])
@pytest.mark.parametrize("depth,seed", [(8, 0), (1202, 17)])
def test_a_run_folder_name_parses_back_to_what_named_it(arch, shortcut, depth, seed, tmp_path):
    folder = C.run_dir(tmp_path, "quick", arch, depth, shortcut, seed)
    parsed = C.parse_run_path(folder.relative_to(tmp_path / "quick"))
    assert parsed == C.RunId(C.arch_kind(arch), depth, C.shortcut_name(arch, shortcut), seed)
    assert C.is_known(parsed.arch, parsed.shortcut)
    assert C.run_name(parsed.arch, parsed.depth, parsed.shortcut) == folder.parent.name  # a fixed point


@pytest.mark.parametrize("name", ["notes", "resnet-20", "resnet_20_A", "resnet-20-A-x", "20-resnet-A", "resnet-x-A",
                                  "resnet-20-", "resnet34-34-B", "resnet-20-A\n", "-20-A", ""])
def test_a_foreign_folder_name_is_not_a_run_name(name):
    assert C.parse_run_name(name) is None


@pytest.mark.parametrize("name", ["seed=", "seed=x", "seed=1 ", "seeds=1", "seed=-1", "seed=1\n", "1"])
def test_a_foreign_folder_name_is_not_a_seed(name):
    assert C.parse_seed_name(name) is None


@pytest.mark.parametrize("path", ["runs/resnet-20-A", "resnet-20-A/seed=0", "runs/resnet-20-A/seed=0/x",
                                  "other/resnet-20-A/seed=0", "runs/resnet-20-A/0", "runs/notes/seed=0"])
def test_a_path_that_is_not_runs_name_seed_names_no_run(path):
    assert C.parse_run_path(path) is None


def test_a_well_formed_name_of_an_unknown_kind_parses_but_is_not_known():
    """The report lists such folders as 'a kind this analysis does not know' instead of guessing."""
    assert C.parse_run_name("vgg-16-none") == ("vgg", 16, "none") and not C.is_known("vgg", "none")
    assert C.parse_run_name("resnet-8-Z") == ("resnet", 8, "Z") and not C.is_known("resnet", "Z")
    assert not C.is_known("plain", "A") and not C.is_known("resnet", "none")


# ---------------------------------------------------------------- reading

def test_both_sides_read_the_same_points_from_a_damaged_metrics_file(tmp_path):
    """The trainer resuming and the report read one file alike: what a kill, a disk or an
    older writer left is skipped and, where asked, named; the rest is kept in order."""
    path = tmp_path / "metrics.jsonl"
    good = [{"format_version": 1, "iter": i, "test_err": 50.0} for i in (10, 20, 30)]
    path.write_text("\n".join([json.dumps(good[0]), "[1, 2]", json.dumps({"format_version": 0, "iter": 15}),
                               json.dumps(good[1]), "", json.dumps({"format_version": 1, "iter": "25"}),
                               json.dumps({"format_version": 1, "iter": True}), json.dumps(good[2]),
                               '{"format_version": 1, "it']) + "\n")
    warnings: list[str] = []
    assert C.read_metrics(path, warnings) == C.read_metrics(path) == good
    assert [w.split(": ", 2)[1] for w in warnings] == ["line 2", "line 3", "line 6", "line 7", "line 9"]
    assert warnings[-1] == f"{path}: line 9: not valid JSON (Unterminated string starting at); line skipped"
    assert C.read_metrics(path, up_to_iter=20) == good[:2] and C.read_metrics(path, up_to_iter=-1) == []
    assert C.read_metrics(tmp_path / "absent.jsonl", warnings) == []


def test_a_newer_format_stops_the_reader_with_the_line_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"format_version": 1, "iter": 10}) + "\n"
                    + json.dumps({"format_version": C.FORMAT_VERSION + 1, "iter": 20}) + "\n")
    with pytest.raises(C.FormatError, match=rf"^{path}: line 2 has format_version 2, newer than this suite reads"):
        C.read_metrics(path)


def test_a_curve_is_lost_when_the_points_do_not_reach_the_last_iteration():
    points = [{"iter": 10}, {"iter": 20}]
    assert C.lost_curve(points, 20) is None
    assert "cut short" in C.lost_curve(points, 30) and "ends at iter 20" in C.lost_curve(points, 30)
    assert "missing or empty" in C.lost_curve([], 20)


# ---------------------------------------------------------------- writing

def test_an_atomic_write_replaces_the_file_whole_or_not_at_all(tmp_path):
    target = tmp_path / "deep" / "summary.json"
    C.atomic_write(target, lambda f: f.write(b"old"))
    assert target.read_bytes() == b"old" and os.stat(target).st_mode & 0o777 == C.PLAIN_MODE

    def fails_half_way(f):
        f.write(b"ne")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        C.atomic_write(target, fails_half_way)
    assert target.read_bytes() == b"old" and sorted(p.name for p in target.parent.iterdir()) == ["summary.json"]
    C.atomic_write(target, lambda f: f.write(b"new"), mode=0o640)
    assert target.read_bytes() == b"new" and os.stat(target).st_mode & 0o777 == 0o640


# ---------------------------------------------------------------- analysis without torch

NO_TORCH = """
import importlib, pkgutil, sys

class NoTorch:  # as if torch were not installed: every import of it fails
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTorch())
import analysis
for module in pkgutil.iter_modules(analysis.__path__):
    importlib.import_module(f"analysis.{module.name}")
from analysis import report
code = report.main(["--results", sys.argv[1]])
print("experiments modules:", sorted(m for m in sys.modules if m.partition(".")[0] == "experiments"))
sys.exit(code)
"""


def test_the_report_runs_where_torch_is_not_installed(tmp_path):
    """analysis/ imports nothing of the training side but the contract, which needs no torch."""
    exp = write_sweep(tmp_path / "results" / "quick")
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(exp)], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "experiments modules: ['experiments', 'experiments.contract', 'experiments.faults']" in proc.stdout
    assert (exp / "report.html").is_file() and (exp / "tables" / "inventory.csv").is_file()
    assert "degradation:" in proc.stdout


def test_the_no_torch_guard_does_fail_an_import_of_torch(tmp_path):
    """The guard above is real: the same finder makes the training side unimportable."""
    script = NO_TORCH.split("import analysis")[0] + "import experiments.runfiles\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr
