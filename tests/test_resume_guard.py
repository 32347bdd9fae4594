"""Every config leaf is classified as a result key or not, so RESULT_KEYS cannot fall behind conf/."""
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.run import resume_guard
from tests.helpers import REPO

GROUPS = ("data", "model", "optim", "schedule", "trainer", "experiment")


def every_composed_leaf() -> set[str]:
    """The leaves of the default config and of every option of every config group."""
    found = set()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        choices = [[]] + [[f"{group}={p.stem}"] for group in GROUPS for p in sorted((REPO / "conf" / group).glob("*.yaml"))]
        for overrides in choices:
            cfg = compose("config", overrides=overrides)
            found |= set(resume_guard.leaves(OmegaConf.to_container(cfg, resolve=False)))
    return found


def covers(prefix: str, leaf: str) -> bool:
    return leaf == prefix or leaf.startswith(prefix + ".")


def test_every_config_leaf_is_either_a_result_key_or_listed_as_not_one():
    leaves = every_composed_leaf()
    assert {"model.depth", "data.num_train", "trainer.device"} <= leaves  # the groups' options were composed
    result = {leaf for leaf in leaves if any(covers(k, leaf) for k in resume_guard.RESULT_KEYS)}
    other = {leaf for leaf in leaves if any(covers(k, leaf) for k in resume_guard.NOT_RESULT_KEYS)}
    assert not leaves - result - other, "classify these in run/resume_guard.py (RESULT_KEYS or NOT_RESULT_KEYS)"
    assert not result & other
    stale = [k for k in (*resume_guard.RESULT_KEYS, *resume_guard.NOT_RESULT_KEYS)
             if not any(covers(k, leaf) for leaf in leaves)]
    assert not stale, "keys no config has any more"


def test_the_schedule_is_compared_as_it_computes():
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        written = compose("config", overrides=["schedule.iterations=16000", "schedule.milestones=null"])
        explicit = compose("config", overrides=["schedule.iterations=16000", "schedule.milestones=[8000,12000]"])
        capped = compose("config", overrides=["schedule.iterations=16000", "schedule.warmup_max_iters=4000"])
    # null milestones are the paper's scaled to the run; warm-up settings of a run that never warms up do not count
    assert resume_guard.changed_keys(resume_guard.result_config(written), resume_guard.result_config(explicit)) == []
    assert resume_guard.changed_keys(resume_guard.result_config(written), resume_guard.result_config(capped)) == []
    assert resume_guard.result_config(written)["schedule"]["milestones"] == [8000, 12000]


@pytest.mark.parametrize("written, used, asked, refused", [
    ("fast", "bf16", "bf16", False),   # computed in bf16: an explicit bf16 asks for the same arithmetic
    ("fast", "bf16", "fast", False),
    ("fast", "bf16", "auto", False),   # a policy resumes the run in its recorded precision
    ("fast", "bf16", "fp32", True),    # an explicit other precision is another result
    ("fast", "fp32", "bf16", True),
    ("bf16", "bf16", "fast", False),
    ("fp32", "fp32", "bf16", True)])
def test_the_precision_is_compared_as_it_computed(tmp_path, written, used, asked, refused):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        saved = compose("config", overrides=[f"trainer.precision={written}"])
        wanted = compose("config", overrides=[f"trainer.precision={asked}"])
    OmegaConf.set_struct(saved, False)
    saved.trainer.precision_used = used
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    if refused:
        with pytest.raises(resume_guard.ConfigError, match=r"different config \(trainer\.precision, per its config"):
            resume_guard.refuse_changed_config(wanted, tmp_path)
    else:
        resume_guard.refuse_changed_config(wanted, tmp_path)
