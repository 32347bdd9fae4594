"""The committed reference results and the analysis can never drift apart: regenerating the
report from the committed run files must give the committed report and tables."""
import shutil

import pytest

from analysis import report
from helpers import REPO

REFERENCE = REPO / "results" / "reference" / "quick"


def without_stamp(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("Generated "))


@pytest.fixture
def regenerated(tmp_path):
    if not (REFERENCE / "runs").is_dir():
        pytest.skip(f"no committed reference results at {REFERENCE}")
    copy = tmp_path / "results" / "reference" / "quick"  # the title names the folder below results/
    shutil.copytree(REFERENCE / "runs", copy / "runs")
    for name in ("plan.json", "multirun.yaml"):
        if (REFERENCE / name).exists():
            shutil.copy(REFERENCE / name, copy / name)
    assert report.main(["--results", str(copy)]) == 0
    return copy


def test_committed_report_matches_the_committed_runs(regenerated):
    assert without_stamp((regenerated / "report.md").read_text()) == without_stamp((REFERENCE / "report.md").read_text())
    for table in sorted((REFERENCE / "tables").glob("*.csv")):
        assert (regenerated / "tables" / table.name).read_text() == table.read_text(), table.name


def test_reference_shows_the_degradation(regenerated):
    import pandas as pd
    deg = pd.read_csv(regenerated / "tables" / "degradation.csv")
    assert set(deg["depth"]) >= {20, 56}
    text = (regenerated / "report.md").read_text()
    assert "Data: CIFAR-10 (JPEG copy)." in text and "Degradation reproduced" in text


def test_readme_shows_the_committed_numbers():
    if not (REFERENCE / "report.md").exists():
        pytest.skip(f"no committed reference report at {REFERENCE}")
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("<!-- reference:start -->"):readme.index("<!-- reference:end -->")]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert len(rows) >= 6
    report_md = (REFERENCE / "report.md").read_text()
    for row in rows:  # every table row in the README is copied from the generated report, never typed
        assert row in report_md, row
