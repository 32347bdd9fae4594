"""Reliability, third campaign (issue 36): a results folder and a data archive are data, never code or
markup; no run is pooled with another recipe or under another name; the report all-old or all-new.

Each case builds the hostile file it is about (an archive with a huge member or hard links, a run folder
copied to another name, metrics lines out of order, a tables/ folder on another file system) and runs
the tool as a user does. Fast: no training (the full-disk case decodes 280 images, then stops)."""
from __future__ import annotations

import errno
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from omegaconf import OmegaConf

from analysis import report, tables
from analysis.collect import COMPLETED, DAMAGED, OTHER_RECIPE, collect
from experiments import data as D
from experiments.data import sources
from experiments.sweep import status as sweep_status
from tests.helpers import REPO, TINY, png_tree
from tests.test_analysis import write_run


def file_size_limit(limit: int):
    """preexec_fn: writes past `limit` bytes fail with EFBIG (a disk that fills up), no SIGXFSZ kill."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def folder_cfg(tmp_path: Path, root: Path):
    return OmegaConf.create(dict(source="cifar10_folder", root=str(root), download=False, split="test",
                                 train_subset=None, normalize="pixel_mean", cache_dir=str(tmp_path / "cache")))


def tarball(tree: Path, path: Path, extra=None) -> Path:
    """`tree` as a .tar.gz, as `tar czf` writes it (hard links stored as links), plus `extra(tf)`."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        tf.add(tree, arcname=".")
        if extra:
            extra(tf)
    return path


class Zeros(io.RawIOBase):
    """A stream of zero bytes: a member of any size without holding it in memory."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer[:] = bytes(len(buffer))
        return len(buffer)


# -------------------------------------------------------------------- item 2: a member bigger than any image

def test_an_archive_member_larger_than_any_image_is_refused_before_it_is_read(tmp_path):
    huge = tarfile.TarInfo("./train/cat/huge.png")
    huge.size = 64 << 20  # 64 MiB of zeros: 390 kB compressed
    archive = tarball(png_tree(tmp_path / "tree", 2, 1), tmp_path / "bomb.tar.gz",
                      lambda tf: tf.addfile(huge, io.BufferedReader(Zeros())))
    assert archive.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(D.DataError) as e:
            D.load_data(folder_cfg(tmp_path, archive))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(e.value) == (f"archive member {archive}:./train/cat/huge.png is 67,108,864 bytes, more than any "
                            f"32x32 image could be (1,048,576); not read; remove it from {archive} or unpack "
                            f"the archive")
    assert peak < 8 << 20, f"{peak:,} bytes allocated: the member was read"
    assert not list((tmp_path / "cache").glob("*"))  # no cache file, no lock, no folder's content


def test_a_split_whose_members_add_up_past_the_limit_is_refused(tmp_path, monkeypatch):
    archive = tarball(png_tree(tmp_path / "tree", 2, 1), tmp_path / "copy.tar.gz")
    monkeypatch.setattr(sources, "MAX_SPLIT_BYTES", 10_000)  # ~3 PNGs: the real limit is 2 GiB
    with pytest.raises(D.DataError, match=r"^the train/ images in .* add up to more than 10,000 bytes"):
        D.load_data(folder_cfg(tmp_path, archive))


# -------------------------------------------------------------------- item 8: links inside an archive

def test_hard_and_symbolic_links_in_an_archive_read_as_the_tree_does(tmp_path):
    tree = png_tree(tmp_path / "tree", 4, 2)
    for i in range(4, 8):  # deduplicated copies, as `hardlink` or `cp -l` leaves them
        os.link(tree / "train" / "cat" / f"{i - 4}.png", tree / "train" / "cat" / f"{i}.png")
    os.link(tree / "train" / "dog" / "0.png", tree / "test" / "dog" / "9.png")  # across the splits
    os.symlink("../bird/1.png", tree / "train" / "cat" / "link.png")
    archive = tarball(tree, tmp_path / "copy.tar.gz")
    with tarfile.open(archive) as tf:
        assert sum(m.islnk() for m in tf) == 5 and sum(m.issym() for m in tf) == 1
    from_tree = D.load_data(folder_cfg(tmp_path, tree))
    from_archive = D.load_data(folder_cfg(tmp_path, archive))
    assert (len(from_archive.train_images), len(from_archive.eval_images)) == (45, 21)
    for name in ("train_images", "train_labels", "eval_images", "eval_labels"):
        assert getattr(from_archive, name).equal(getattr(from_tree, name)), name


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../outside.png", "nowhere.png"])
def test_a_link_to_nothing_in_the_archive_is_refused_in_one_line(tmp_path, target):
    def add_link(tf):
        link = tarfile.TarInfo("./train/cat/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, target
        tf.addfile(link)
    archive = tarball(png_tree(tmp_path / "tree", 2, 1), tmp_path / "copy.tar.gz", add_link)
    with pytest.raises(D.DataError) as e:
        D.load_data(folder_cfg(tmp_path, archive))
    assert str(e.value).startswith(f"archive member {archive}:./train/cat/link.png links to ")
    assert "which is not a file in the archive" in str(e.value) and "\n" not in str(e.value)


# -------------------------------------------------------------------- item 10: a full disk under the cache

def test_a_full_disk_under_the_data_cache_is_one_line_and_leaves_no_half_cache(tmp_path):
    """The train split's cache fits under the limit, the test split's (larger here) does not: the run ends
    with one line naming the file, exit 2, no failed summary, no run folder and no train cache left."""
    tree = png_tree(tmp_path / "tree", 8, 20)  # caches of ~250 kB and ~620 kB
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-m", "experiments.train", *TINY, f"results_dir={tmp_path / 'results'}",
                           "data=cifar10_folder", f"data.root={tree}", f"data.cache_dir={cache}"], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=120,
                          preexec_fn=file_size_limit(400_000))
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert re.fullmatch(rf"error: cannot write the data cache {re.escape(str(cache))}/cifar10_folder-test-\w+\.pt "
                        r"\(EFBIG: File too large\); free disk space there, or set data.cache_dir=<another folder> "
                        r"\(null: no cache, decode every run\)", errors[0]), errors[0]
    assert not list(cache.glob("*"))
    assert not list((tmp_path / "results").rglob("summary.json"))


# -------------------------------------------------------------------- user errors of `make data`

@pytest.mark.parametrize("data", ["nosuch", "../experiment/smoke"])
def test_make_data_with_an_unknown_data_option_is_one_line(data):
    proc = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", "data", f"DATA={data}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("make")]
    assert lines == [f"error: unknown DATA '{data}'; choose one of cifar10, cifar10_folder, fake, fake_tiny"]


# -------------------------------------------------------------------- item 3: markup in results files

def test_report_md_shows_html_and_links_from_results_files_as_text(tmp_path):
    exp = tmp_path / "x"
    for arch in ("plain", "resnet"):
        run = write_run(exp, arch, 20, iterations=800)
        summary = json.loads((run / "summary.json").read_text())
        summary |= {"device_name": "<img src=x onerror=alert(1)>", "git_commit": "[c](javascript:alert(2))"}
        (run / "summary.json").write_text(json.dumps(summary))
    (exp / "runs" / "<script>alert(3)<" / "seed=0").mkdir(parents=True)  # a folder the analysis cannot read
    assert report.main(["--results", str(exp)]) == 0
    md, html = (exp / "report.md").read_text(), (exp / "report.html").read_text()
    # no tag, no link but the report's own figures (a `](` not escaped)
    assert not re.search(r"<[a-z/]|(?<!\\)\]\((?!figures/)", md)
    assert "<img src=x" not in html and "<script" not in html  # as before: report.html escapes all text
    assert "&lt;img src=x onerror=alert(1)>" in md and "\\](javascript:alert(2))" in md
    assert "&lt;script>alert(3)&lt;/seed=0" in md


# -------------------------------------------------------------------- item 6: the folder's name against its files

def test_a_run_folder_copied_to_another_name_is_damaged_and_left_out(tmp_path):
    exp = tmp_path / "x"
    for seed, err in ((0, 5.0), (1, 7.0)):
        for depth in (20, 56):
            write_run(exp, "plain", depth, seed=seed, train_err=err + depth / 10, iterations=800)
    runs = exp / "runs"
    shutil.copytree(runs / "plain-20-none" / "seed=0", runs / "plain-20-none" / "seed=2")  # another seed's name
    shutil.rmtree(runs / "plain-56-none" / "seed=1")
    shutil.copytree(runs / "plain-20-none" / "seed=1", runs / "plain-56-none" / "seed=1")  # another depth's
    results = collect(exp)
    status = results.runs.set_index("run_id")["status"]
    assert status["plain-20-none/seed=2"] == status["plain-56-none/seed=1"] == DAMAGED
    assert (status == COMPLETED).sum() == 3
    error = results.runs.set_index("run_id").loc["plain-56-none/seed=1", "error"]
    assert error.startswith("the folder says plain-56-none/seed=1 but its summary.json says depth 20: a run "
                            "folder copied or renamed")
    row = tables.table6(results).set_index("depth").loc[56]
    assert row["n"] == 1 and row["final_train_err_mean"] == pytest.approx(5.0 + 5.6)
    assert report.main(["--results", str(exp)]) == 0
    problems = (exp / "report.md").read_text().split("## Problems")[1]
    assert "plain-20-none/seed=2: damaged: the folder says plain-20-none/seed=2 but its summary.json says seed 0" \
        in problems


# -------------------------------------------------------------------- item 7: metrics lines out of order

@pytest.mark.parametrize("damage, reason", [
    ("swap", "metrics.jsonl steps back from iter 800 to 400"),
    ("repeat", "metrics.jsonl holds iter 400 twice")])
def test_metrics_lines_out_of_order_or_repeated_make_the_run_damaged(tmp_path, damage, reason):
    write_run(tmp_path, "plain", 20, seed=1, iterations=1600)
    run = write_run(tmp_path, "plain", 20, seed=0, iterations=1600)
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    lines[0:2] = [lines[1], lines[0]] if damage == "swap" else [lines[0], lines[0], lines[1]]
    path.write_text("\n".join(lines) + "\n")
    results = collect(tmp_path)
    row = results.runs.set_index("run_id").loc["plain-20-none/seed=0"]
    assert row["status"] == DAMAGED and row["error"].startswith(reason)
    curve = results.metrics[results.metrics["run_id"] == "plain-20-none/seed=0"]["iter"].tolist()
    assert curve == sorted(curve)  # the curve is drawn in order whatever the file
    assert tables.table6(results).iloc[0]["n"] == 1


# -------------------------------------------------------------------- item 4: runs of another recipe

def _with(run: Path, config: dict, summary: dict) -> None:
    """Change a fabricated run's config.yaml and summary.json as a changed recipe would have."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    for dotted, value in config.items():
        group, key = dotted.split(".")
        cfg[group][key] = value
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (run / "summary.json").write_text(json.dumps(json.loads((run / "summary.json").read_text()) | summary))


def test_runs_of_another_recipe_are_listed_and_never_pooled(tmp_path):
    """`make sweep SEEDS=2 ARGS=optim.lr=0.5` on a folder whose seed 0 trained at 0.1: the report must not
    average the two recipes; a run copied in from an experiment of another length neither."""
    exp = tmp_path / "quick"
    for arch in ("plain", "resnet"):
        for depth in (20, 56):
            write_run(exp, arch, depth, seed=0, train_err=10.0, iterations=800)
            _with(write_run(exp, arch, depth, seed=1, train_err=60.0, iterations=800),
                  {"optim.lr": 0.5}, {"lr": 0.5})
    write_run(exp, "plain", 20, seed=2, train_err=30.0, iterations=1200)  # copied from another experiment
    results = collect(exp)
    status = results.runs.set_index("run_id")["status"]
    assert set(status[status == OTHER_RECIPE].index) == {
        "plain-20-none/seed=1", "plain-56-none/seed=1", "resnet-20-A/seed=1", "resnet-56-A/seed=1",
        "plain-20-none/seed=2"}
    error = results.runs.set_index("run_id").loc["plain-20-none/seed=1", "error"]
    assert error.startswith("trained with optim.lr=0.5 (not 0.1), unlike the experiment's other runs")
    assert results.runs.set_index("run_id").loc["plain-20-none/seed=2", "error"].startswith(
        "trained with schedule.iterations=1200 (not 800)")
    t6 = tables.table6(results)
    assert (t6["n"] == 1).all() and (t6["final_train_err_mean"] == 10.0).all()
    assert report.main(["--results", str(exp)]) == 0
    problems = (exp / "report.md").read_text().split("## Problems")[1]
    assert "plain-56-none/seed=1: other recipe: trained with optim.lr=0.5 (not 0.1)" in problems


def test_seeds_of_one_net_with_another_model_are_not_pooled(tmp_path):
    write_run(tmp_path, "resnet", 20, seed=0, iterations=800)
    _with(write_run(tmp_path, "resnet", 20, seed=1, iterations=800), {"model.width": 32}, {})
    status = collect(tmp_path).runs.set_index("seed")["status"]
    assert status[0] == COMPLETED and status[1] == OTHER_RECIPE


# -------------------------------------------------------------------- files of the wrong shape

@pytest.mark.parametrize("file, content, warning, in_table", [
    ("summary.json", "[1, 2]", "summary.json: not a JSON object; run listed as corrupt", "corrupt"),
    ("summary.json", None, "summary.json: device_name is a dict, not a number or text; run listed as corrupt",
     "completed"),  # the sweep's table shows no device name
    ("config.yaml", "data: 5\n", "config.yaml: 'data' is 5, not a group of keys; ignored", "completed"),
    ("config.yaml", "- a\n- b\n", "config.yaml: not a mapping of config groups; ignored", "completed")],
    ids=["summary-list", "summary-field-dict", "config-scalar-data", "config-list"])
def test_a_summary_or_config_of_the_wrong_shape_is_a_warning_in_the_report_and_the_sweeps_table(
        tmp_path, capsys, file, content, warning, in_table):
    write_run(tmp_path, "plain", 20, seed=0, iterations=800)
    run = write_run(tmp_path, "plain", 20, seed=1, iterations=800)
    if content is None:
        content = json.dumps(json.loads((run / file).read_text()) | {"device_name": {"gpu": 1}})
    (run / file).write_text(content)
    assert report.main(["--results", str(tmp_path)]) == 0
    assert f"warning: {run / warning}" in capsys.readouterr().err
    sweep_status.report([SimpleNamespace(folder=run)])  # the sweep's final table: no traceback
    assert re.search(rf"seed=1\s+{in_table}", capsys.readouterr().out)


def test_source_date_epoch_not_an_integer_is_one_line_and_nothing_written(tmp_path, capsys, monkeypatch):
    write_run(tmp_path, "plain", 20, iterations=800)
    before = sorted(tmp_path.rglob("*"))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    assert report.main(["--results", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("error: SOURCE_DATE_EPOCH='yesterday' is not a time in whole seconds since "
                                       "1970 (e.g. 1700000000); set it to one, or unset it\n")
    assert sorted(tmp_path.rglob("*")) == before


# -------------------------------------------------------------------- item 9: the report's commit

def _outputs(exp: Path) -> dict:
    """Every file of the report (figures, tables, report.*), hidden ones included, by path."""
    return {str(p.relative_to(exp)): p.read_bytes() for p in exp.rglob("*")
            if p.is_file() and "runs" not in p.relative_to(exp).parts and p.name != ".report.lock"}


@pytest.fixture(scope="module")
def first_report(tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("reported") / "x"
    write_run(exp, "plain", 20, iterations=800)
    write_run(exp, "resnet", 20, iterations=800)
    assert report.main(["--results", str(exp)]) == 0
    return exp


@pytest.fixture
def reported(first_report, tmp_path) -> Path:
    """An experiment with a report (a copy: made once), and a change to its runs that the next report shows."""
    exp = shutil.copytree(first_report, tmp_path / "x")
    write_run(exp, "plain", 20, seed=1, iterations=800, train_err=9.0)
    return exp


def test_tables_on_another_file_system_get_the_new_report(reported):
    """tables/ a link to a folder on another file system (a mount): a rename there is EXDEV, so the
    files are copied beside their targets first, then switched; the report completes."""
    other = Path(tempfile.mkdtemp(dir="/dev/shm")) if os.path.isdir("/dev/shm") else None
    if other is None or os.stat(other).st_dev == os.stat(reported).st_dev:
        pytest.skip("no second file system at /dev/shm")
    try:
        shutil.copytree(reported / "tables", other / "tables")
        shutil.rmtree(reported / "tables")
        (reported / "tables").symlink_to(other / "tables")
        assert report.main(["--results", str(reported)]) == 0
        inventory = (other / "tables" / "inventory.csv").read_text()
        assert "plain-20-none,1,completed" in inventory
        assert not [p for p in (other / "tables").iterdir() if p.name.startswith(".")]
    finally:
        shutil.rmtree(other)


def test_a_rename_failing_half_way_through_the_commit_puts_every_old_file_back(reported, capsys, monkeypatch):
    """The issue's case: EXDEV after four figures were already replaced. Every old file is back, and
    the message says what happened, not "free disk space"."""
    before, real_replace, calls = _outputs(reported), os.replace, []

    def failing(src, dst, *args, **kwargs):
        inside = Path(dst).is_relative_to(reported)
        if inside and not any(part.startswith(".") for part in Path(dst).relative_to(reported).parts):
            calls.append(dst)
            if len(calls) == 5:
                raise OSError(errno.EXDEV, "Invalid cross-device link", str(dst))
        return real_replace(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "replace", failing)
    assert report.main(["--results", str(reported)]) == 1
    error = capsys.readouterr().err.splitlines()[-1]
    assert re.fullmatch(r"error: cannot write \S+ \(EXDEV: Invalid cross-device link\); a folder of this path is "
                        r"on another file system and moving there failed: make it a plain folder of the "
                        r"experiment, then rerun; the previous report is unchanged", error), error
    assert _outputs(reported) == before


def test_a_link_loop_in_the_way_of_figures_is_named_as_such(reported, capsys):
    before = _outputs(reported)
    shutil.rmtree(reported / "figures")
    (reported / "figures").symlink_to("figures")  # points at itself
    before = {k: v for k, v in before.items() if not k.startswith("figures/")}
    assert report.main(["--results", str(reported)]) == 1
    error = capsys.readouterr().err.splitlines()[-1]
    assert re.fullmatch(rf"error: cannot write {re.escape(str(reported))}/figures/\w+\.png \(ELOOP: Too many levels "
                        r"of symbolic links\); a symbolic link on this path points back into itself: remove or fix "
                        r"it, then rerun; the previous report is unchanged", error), error
    assert _outputs(reported) == before


# -- the sweep refuses to mix recipes before it trains anything (item 4, the sweep's half) ----------------
@pytest.mark.parametrize("args,needle", [
    (["--seeds", "2", "optim.lr=0.5"], "holds a run with a different config (optim.lr, schedule.lr, per its config.yaml)"),
    (["optim.lr=0.5", "seed=1"], "would train with another optim.lr, schedule.lr than the finished run"),
    (["schedule.iterations=20", "seed=1"], "would train with another schedule.iterations"),
])
def test_a_sweep_that_would_mix_recipes_is_refused_before_any_run_trains(args, needle, tmp_path, smoke_root, capsys):
    import shutil
    from experiments.sweep import launch as sweep_launch
    shutil.copytree(smoke_root, tmp_path / "res")
    before = sorted(p for p in (tmp_path / "res").rglob("*"))
    assert sweep_launch.main(["--exp", "smoke", "--results", str(tmp_path / "res"), *args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.strip().count("\n") == 0
    assert sorted(p for p in (tmp_path / "res").rglob("*")) == before  # seed 1 never started
