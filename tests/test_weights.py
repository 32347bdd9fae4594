"""A trained net kept as data: weights.safetensors written at completion, load_trained, experiments.evaluate,
and every malformed weights file refused with one line."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from experiments import train as train_mod
from experiments.models import build_from_config
from experiments.tools.evaluate import evaluate_run
from experiments.weights import WEIGHTS, WeightsError, load_trained, run_config
from tests.helpers import cli, run_folder, summary, tiny_cfg


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A tiny run stopped early enough that its net still errs (the 40-iteration one scores 0 % on fake data)."""
    root = tmp_path_factory.mktemp("weights")
    train_mod.run(tiny_cfg(root, "schedule.iterations=20"))
    return run_folder(root)


def test_a_completed_run_writes_its_net_as_data_with_metadata_naming_it(short_run):
    tensors = load_file(str(short_run / WEIGHTS))
    model = build_from_config(run_config(short_run).model)
    assert set(tensors) == set(model.state_dict())
    assert all(t.dtype == torch.float32 for k, t in tensors.items() if "num_batches_tracked" not in k)
    from safetensors import safe_open
    with safe_open(str(short_run / WEIGHTS), "pt") as f:
        meta = f.metadata()
    assert meta["arch"] == "resnet" and meta["depth"] == "8" and meta["shortcut"] == "A" and meta["classes"] == "10"


def test_load_trained_gives_the_final_checkpoints_logits_exactly(short_run):
    net = load_trained(short_run)
    assert not net.training
    ref = build_from_config(run_config(short_run).model)
    ref.load_state_dict(torch.load(short_run / "last.pt", weights_only=True)["model"])
    ref.eval()
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(net(x), ref(x))


def test_evaluate_gives_the_recorded_final_test_error(short_run):
    out = evaluate_run(short_run)
    assert out["test_err"] > 0  # a result that could differ
    assert out["test_err"] == summary(short_run)["final_test_err"]


def _tamper(folder, how):
    path = folder / WEIGHTS
    tensors = load_file(str(path))
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    if how == "wrong shape":
        tensors["fc.weight"] = torch.zeros(3, 3)
    elif how == "extra key":
        tensors["fc.extra"] = torch.zeros(1)
    elif how == "missing key":
        del tensors["fc.bias"]
    elif how == "other net":
        meta["depth"] = "14"
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "not safetensors":
        path.write_bytes(b"\x80\x04\x95garbage")
    else:
        save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("how,needle", [("wrong shape", "fc.weight has shape (3, 3)"),
                                        ("extra key", "extra ['fc.extra']"),
                                        ("missing key", "missing ['fc.bias']"),
                                        ("other net", "depth '14' (config.yaml: '8')"),
                                        ("truncated", "not a readable safetensors file"),
                                        ("not safetensors", "not a readable safetensors file")])
def test_a_weights_file_that_does_not_hold_the_runs_net_is_refused_with_one_line(short_run, tmp_path, how, needle):
    folder = tmp_path / "run"
    shutil.copytree(short_run, folder)
    _tamper(folder, how)
    with pytest.raises(WeightsError) as refused:
        load_trained(folder)
    assert needle in str(refused.value) and str(folder / WEIGHTS) in str(refused.value)
    assert "\n" not in str(refused.value)


def test_evaluate_refuses_a_bad_file_and_a_folder_that_is_no_run_with_exit_2(short_run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(short_run, folder)
    _tamper(folder, "other net")
    bad = cli(str(folder), module="experiments.evaluate")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "another network" in bad.stderr
    empty = cli(str(tmp_path), module="experiments.evaluate")
    assert empty.returncode == 2 and "is not a run folder" in empty.stderr


def test_a_run_completed_before_weights_existed_gets_them_from_its_final_checkpoint(short_run, tmp_path):
    root = tmp_path / "res"
    folder = run_folder(root)
    shutil.copytree(short_run, folder)
    (folder / WEIGHTS).unlink()
    done = json.loads((folder / "summary.json").read_text())
    train_mod.run(tiny_cfg(root, "schedule.iterations=20"))  # "already completed": nothing retrained
    assert json.loads((folder / "summary.json").read_text()) == done
    assert load_file(str(folder / WEIGHTS)).keys() == load_file(str(short_run / WEIGHTS)).keys()
    assert all(torch.equal(a, b) for a, b in zip(load_file(str(folder / WEIGHTS)).values(),
                                                 load_file(str(short_run / WEIGHTS)).values()))
