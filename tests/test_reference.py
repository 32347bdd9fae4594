"""The committed reference results and the analysis can never drift apart: regenerating the
report from the committed run files must give the committed report and tables, for every
experiment committed under results/reference/."""
import shutil

import pytest

from analysis import report
from tests.helpers import REPO

REFERENCES = REPO / "results" / "reference"
COMMITTED = sorted(p.parent.name for p in REFERENCES.glob("*/report.md") if (p.parent / "runs").is_dir())


def without_stamp(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("Generated "))


def regenerate(tmp_path, name: str):
    source = REFERENCES / name
    copy = tmp_path / "results" / "reference" / name  # the title names the folder below results/
    shutil.copytree(source / "runs", copy / "runs")
    for extra in ("plan.json", "multirun.yaml"):
        if (source / extra).exists():
            shutil.copy(source / extra, copy / extra)
    assert report.main(["--results", str(copy)]) == 0
    return copy


def test_quick_reference_is_committed():
    assert "quick" in COMMITTED, f"no committed reference results at {REFERENCES / 'quick'}"


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_report_matches_the_committed_runs(tmp_path, name):
    regenerated, committed = regenerate(tmp_path, name), REFERENCES / name
    assert without_stamp((regenerated / "report.md").read_text()) == without_stamp((committed / "report.md").read_text())
    assert without_stamp((regenerated / "report.html").read_text()) == without_stamp(
        (committed / "report.html").read_text())
    for table in sorted((committed / "tables").glob("*.csv")):
        assert (regenerated / "tables" / table.name).read_text() == table.read_text(), table.name


def test_quick_reference_calls_a_half_shown_effect_half_shown(tmp_path):
    import pandas as pd
    regenerated = regenerate(tmp_path, "quick")
    verdicts = pd.read_csv(regenerated / "tables" / "verdicts.csv").set_index("arch")
    assert verdicts.loc["plain", "state"] == "shown" and verdicts.loc["resnet", "state"] == "not shown"
    text = (regenerated / "report.md").read_text()
    assert "Data: CIFAR-10 (JPEG copy)." in text and "> **Degradation half-shown" in text
    assert "Degradation reproduced" not in text
    assert "the deeper ResNet has not yet overtaken the shallower one" in text


def test_readme_shows_the_committed_numbers():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("<!-- reference:start -->"):readme.index("<!-- reference:end -->")]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert len(rows) >= 6
    reports = "\n".join((REFERENCES / name / "report.md").read_text() for name in COMMITTED)
    for row in rows:  # every table row in the README is copied from a generated report, never typed
        assert row in reports, row


def test_a_committed_checkpoint_belongs_to_an_unfinished_run_and_loads_as_data():
    """The only checkpoints in the tree are those of reference runs still in progress (a fresh clone's
    `make sweep` resumes them); the commit that lands a run removes its last.pt, whose weights stay."""
    import json

    import torch
    for ckpt in sorted(REFERENCES.glob("*/runs/*/seed=*/last.pt")):
        summary = ckpt.parent / "summary.json"
        assert not summary.exists() or json.loads(summary.read_text()).get("status") not in ("completed", "diverged"), \
            f"{ckpt}: the run is finished; remove its checkpoint (weights.safetensors keeps the net)"
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        metrics = (ckpt.parent / "metrics.jsonl").read_text().splitlines()
        assert json.loads(metrics[-1])["iter"] <= state["iteration"], f"{ckpt}: metrics beyond the checkpoint"
