"""Trained nets measured and drawn: the lesion study and the loss landscape (experiments/tools/lesion.py,
experiments/tools/landscape.py, make analyse-nets) on tiny trained nets, and the report's section "Why residual
nets train" (analysis/nets.py, nets_figures.py) from those files and from crafted ones."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis import figures, nets, nets_figures, report
from analysis.collect import collect
from experiments import train as train_mod
from experiments.tools import analyse_nets, landscape, lesion
from experiments.tools.evaluate import evaluate_run
from experiments.tools.trained_run import open_run
from experiments.weights import WEIGHTS, load_trained
from tests.helpers import summary, tiny_cfg
from tests.test_analysis import write_run

SMALL = ["--points", "5", "--grid", "5", "--subset", "64", "--max-k", "2"]  # seconds on one core


@pytest.fixture(scope="module")
def exp(tmp_path_factory) -> Path:
    """An experiment of two tiny trained nets (plain-8, ResNet-8), stopped early enough to err, measured by
    `make analyse-nets` with small settings."""
    root = tmp_path_factory.mktemp("nets")
    for model in ("resnet", "plain"):
        train_mod.run(tiny_cfg(root, f"model={model}", "schedule.iterations=20"))
    assert analyse_nets.main(["--results", str(root / "single"), *SMALL]) == 0
    return root / "single"


def _run(exp: Path, name: str) -> Path:
    return exp / "runs" / name / "seed=0"


@pytest.mark.parametrize("name,blocks", [("resnet-8-A", 3), ("plain-8-none", 3)])
def test_lesion_measures_every_block_and_its_intact_error_is_the_runs_evaluation(exp, name, blocks):
    run_dir = _run(exp, name)
    out = json.loads((run_dir / lesion.LESION).read_text())
    assert out["intact"]["err"] == evaluate_run(run_dir)["test_err"] == summary(run_dir)["final_test_err"] > 0
    assert out["eval_images"] == 128 and out["settings"]["eval_images"] == "all"
    assert [b["index"] for b in out["blocks"]] == list(range(1, blocks + 1))
    assert all(0 <= b["err"] <= 100 for b in out["blocks"])
    if name.startswith("resnet"):  # k = 1, 2: three seeded draws each, k distinct blocks per draw
        assert [(r["k"], r["draw"]) for r in out["random"]] == [(k, d) for k in (1, 2) for d in range(3)]
        assert all(len(set(r["blocks"])) == r["k"] for r in out["random"])
        assert {b["lesion"] for b in out["blocks"]} == {"residual branch dropped, shortcut kept"}
    else:  # the first block keeps its shape; the first of stages 2 and 3 subsample and widen
        assert out["random"] == []
        assert [b["reshapes"] for b in out["blocks"]] == [False, True, True]
        assert out["blocks"][0]["lesion"] == "identity" and "zero-padded" in out["blocks"][1]["lesion"]


def test_landscape_is_centred_on_the_trained_net_and_shares_its_first_direction(exp):
    run_dir = _run(exp, "resnet-8-A")
    out = json.loads((run_dir / landscape.LANDSCAPE).read_text())
    one, two = out["one_d"], out["two_d"]
    assert one["alpha"] == [-1.0, -0.5, 0.0, 0.5, 1.0] and len(one["loss"]) == len(one["err"]) == 5
    assert len(two["loss"]) == 5 and all(len(row) == 5 for row in two["loss"])
    assert two["loss"][2] == one["loss"]  # the 1D curve is the 2D grid's b = 0 row: d1 is the same
    run = open_run(run_dir)
    x, y = run.batches.fixed_train_batch(64)
    with torch.no_grad():
        assert one["loss"][2] == pytest.approx(F.cross_entropy(run.model(x), y).item(), rel=1e-6)
    assert out["subset_images"] == 64 and out["settings"]["direction_seed"] == 0
    assert min(one["loss"]) <= one["loss"][2] * 1.5 < max(one["loss"])  # a basin, not a flat line


def _copy(exp: Path, name: str, tmp_path: Path) -> Path:
    """A run folder to change: the module's experiment stays as analyse_nets left it."""
    return Path(shutil.copytree(_run(exp, name), tmp_path / "runs" / name / "seed=0"))


def test_tools_leave_the_net_as_they_found_it(exp, tmp_path):
    run = open_run(_copy(exp, "plain-8-none", tmp_path))
    lesion.measure(run, max_k=1, force=True)
    landscape.measure(run, points=3, grid=None, subset=32, force=True)
    assert not any("forward" in m.__dict__ for m in run.model.modules())
    ref = load_trained(run.run_dir)
    assert all(torch.equal(a, b) for a, b in zip(run.model.state_dict().values(), ref.state_dict().values()))


def test_a_rerun_skips_what_is_computed_and_recomputes_what_changed(exp, tmp_path, capsys):
    files = sorted(exp.glob("runs/*/seed=0/*.json"))
    stamps = [f.stat().st_mtime_ns for f in files]
    assert analyse_nets.main(["--results", str(exp), *SMALL]) == 0
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert capsys.readouterr().out.count(": up to date:") == 4
    run = open_run(_copy(exp, "resnet-8-A", tmp_path))
    assert lesion.measure(run, max_k=2, draws=3, seed=0)[1] is False
    assert lesion.measure(run, max_k=2, draws=1, seed=0)[1] is True


@pytest.mark.parametrize("args,needle", [
    (["lesion", "{plain}", "--draws", "0"], "--draws must be a positive integer"),
    (["landscape", "{plain}", "--points", "4"], "use odd numbers"),
    (["lesion", "{bare}"], "weights.safetensors is missing"),
])
def test_a_users_mistake_is_one_line_and_exit_2(exp, tmp_path, capsys, args, needle):
    bare = _copy(exp, "plain-8-none", tmp_path)
    (bare / WEIGHTS).unlink()
    tool, *rest = args
    rest = [a.format(plain=_run(exp, "plain-8-none"), bare=bare) for a in rest]
    assert {"lesion": lesion, "landscape": landscape}[tool].main(rest) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_the_report_draws_the_section_and_names_a_run_without_weights(exp, tmp_path, monkeypatch):
    copy = tmp_path / "single"
    shutil.copytree(exp, copy)
    (_run(copy, "plain-8-none") / WEIGHTS).unlink()  # completed before the suite kept weights
    monkeypatch.setattr(figures, "build_all", lambda results, narrow=False: [])  # the other figures: elsewhere
    assert report.main(["--results", str(copy)]) == 0
    text = (copy / "report.md").read_text()
    section = text.split(f"## {nets.SECTION}")[1].split("\n## ")[0]
    assert "No weights.safetensors" in section and "plain-8-none/seed=0" in section
    intact = json.loads((_run(copy, "resnet-8-A") / lesion.LESION).read_text())["intact"]["err"]
    assert f"ResNet-8 (A) {intact:.1f} % intact" in section
    for name in nets_figures.NAMES[:3]:  # the 2D pair needs a plain net with weights
        assert f"figures/{name}.png" in section and (copy / "figures" / f"{name}.png").exists()
    assert "landscape_2d.png" not in text


# ---------------------------------------------------------------- crafted files: figures and words
def _craft(exp: Path, arch: str, errs: list[float], intact: float, grid: np.ndarray | None = None) -> Path:
    """A completed depth-20 run with weights and the tools' files, as experiments/ writes them."""
    run_dir = write_run(exp, arch, 20)
    (run_dir / WEIGHTS).write_bytes(f"weights of {arch}".encode())
    sha = hashlib.sha256((run_dir / WEIGHTS).read_bytes()).hexdigest()
    random = [] if arch == "plain" else [{"k": k, "draw": d, "blocks": list(range(1, k + 1)), "err": intact + 5 * k + d}
                                         for k in (1, 2, 3) for d in range(3)]
    blocks = [{"index": i + 1, "err": e, "reshapes": i in (3, 6)} for i, e in enumerate(errs)]
    out = {"format_version": 1, "settings": {"weights_sha256": sha}, "intact": {"err": intact}, "chance_err": 90.0,
           "eval_images": 10000, "blocks": blocks, "random": random}
    (run_dir / lesion.LESION).write_text(json.dumps(out))
    axis = [-1.0, 0.0, 1.0]
    scape = {"format_version": 1, "subset_images": 500, "computed_with": {"device_name": "cpu", "precision": "fp32"},
             "settings": {"weights_sha256": sha, "span": 1.0, "subset": 500, "direction_seed": 0},
             "one_d": {"points": 3, "alpha": axis, "loss": [3.0, 0.1, 2.0], "err": [50.0, 1.0, 40.0]},
             "two_d": {"grid": 3, "alpha": axis, "beta": axis, "loss": grid.tolist(), "err": grid.tolist(),
                       "elapsed_s": 60}}
    (run_dir / landscape.LANDSCAPE).write_text(json.dumps(scape))
    return run_dir


@pytest.fixture
def crafted(tmp_path) -> Path:
    exp = tmp_path / "crafted"
    bumpy = np.array([[0.5, 9.0, 0.4], [9.0, 2.0, 9.0], [8.0, 9.0, 0.1]])  # three grid minima, in the corners
    bowl = np.array([[3.0, 2.0, 3.0], [2.0, 0.2, 2.0], [3.0, 2.0, 3.0]])
    _craft(exp, "plain", [89.0] * 9, 12.0, bumpy)
    _craft(exp, "resnet", [9.0, 9.5, 10.0, 30.0, 9.0, 9.0, 20.0, 9.0, 9.0], 8.5, bowl)
    return exp


def test_crafted_files_give_every_figure_and_their_numbers(crafted):
    results = collect(crafted)
    plots = {p.name: p for p in nets_figures.build_all(results)}
    assert all(plots[n].figure is not None for n in nets_figures.NAMES)
    (panel,) = plots["lesion_blocks"].figure.axes  # plain and ResNet of depth 20 on one panel
    assert [line.get_label() for line in panel.get_lines() if not line.get_label().startswith("_")] == [
        "plain-20 (1 seed)", "ResNet-20 (A) (1 seed)"]
    intact = [line.get_ydata()[0] for line in panel.get_lines() if line.get_label() == "_intact"]
    assert sorted(intact) == [8.5, 12.0]  # the intact nets' reference lines
    plain_ax, res_ax = plots["landscape_2d"].figure.axes[:2]
    norms = [ax.collections[0].norm for ax in (plain_ax, res_ax)]
    assert (norms[0].vmin, norms[0].vmax) == (norms[1].vmin, norms[1].vmax) == (0.1, 9.0)  # one colour scale
    data = nets.read_nets(results)
    assert "plain-20 12.0 % intact, median 89.0 %" in nets.lesion_line(data)
    assert "ResNet-20 (A) 8.5 % intact, median 9.0 % with one block removed (worst 30.0 %, block 4, a downsampling" \
        in nets.lesion_line(data)
    assert "ResNet-20 (A) 14.5 % at k=1 to 24.5 % at k=3 (3 draws per k)" in nets.k_line(data)
    surface = nets.surface_line(nets.contour_pair(data))
    assert "plain-20 loss 0.1 to 9, 3 local minima" in surface
    assert "ResNet-20 (A) loss 0.2 to 3, 1 local minimum" in surface


def test_files_of_other_weights_and_runs_without_weights_are_named(crafted):
    (crafted / "runs" / "plain-20-none" / "seed=0" / WEIGHTS).write_bytes(b"retrained")
    (crafted / "runs" / "resnet-20-A" / "seed=0" / landscape.LANDSCAPE).write_text('{"format_version": 1}')
    write_run(crafted, "resnet", 32)  # completed, no weights
    blocks = nets.section(collect(crafted), [], {})
    words = " ".join(b[1] for b in blocks if b[0] == "p")
    assert "computed for other weights" in words and "plain-20-none/seed=0/lesion.json" in words
    assert "resnet-20-A/seed=0/landscape.json: unreadable or malformed" in words
    assert "No weights.safetensors" in words and "resnet-32-A/seed=0" in words


def test_without_weights_the_section_is_one_line_and_without_completed_runs_none(tmp_path):
    write_run(tmp_path / "old", "plain", 20)
    write_run(tmp_path / "old", "resnet", 20)
    heading, line = nets.section(collect(tmp_path / "old"), [], {})
    assert heading == ("h2", nets.SECTION) and "plain-20-none/seed=0, resnet-20-A/seed=0" in line[1]
    write_run(tmp_path / "running", "resnet", 20, status=None)
    assert nets.section(collect(tmp_path / "running"), [], {}) == []
