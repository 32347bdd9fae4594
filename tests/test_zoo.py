"""The wider family (issue 10): ImageNet-style resnet18..152 and their plain twins, the
pre-activation CIFAR net, their configs, runs and analysis labels.

Big nets are built on the meta device (no memory, no init); real forward/backward passes use
2 tiny images and one thread."""
from __future__ import annotations

import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from torch import nn

from analysis import figures
from analysis.collect import collect
from experiments import train as train_mod
from experiments.contract import arch_kind, run_name
from experiments.models import (
    ZOO, PreActBlock, PreActCifarNet, build_from_config, build_model, conv_layers, count_params, response_layers,
    zoo_depth,
)
from experiments.run.checks import ConfigError, check_config
from experiments.sweep import launch as sweep_launch
from experiments.sweep import request as sweep_request
from tests.helpers import REPO, run_folder, summary, tiny_cfg
from tests.test_analysis import write_run

TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
RESNETS = [f"resnet{d}" for d in TORCHVISION_PARAMS]
PLAINS = [f"plain{d}" for d in TORCHVISION_PARAMS]


def on_meta(*args, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return build_model(*args, **kwargs)


def projection_params(model: nn.Module) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if ".shortcut." in name)


# ---------------------------------------------------------------- parameter counts

@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMS))
def test_imagenet_stem_counts_equal_torchvision_to_the_unit(depth):
    ours = on_meta(f"resnet{depth}", num_classes=1000, stem="imagenet")
    with torch.device("meta"):
        theirs = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    assert count_params(ours) == count_params(theirs) == TORCHVISION_PARAMS[depth]
    # the same tensors, not merely the same total
    shapes = lambda m: sorted(tuple(p.shape) for p in m.parameters())  # noqa: E731
    assert shapes(ours) == shapes(theirs)
    assert count_params(on_meta(f"resnet{depth}", depth, "B", num_classes=1000, stem="imagenet")) \
        == TORCHVISION_PARAMS[depth]  # depth given explicitly, shortcut B named: the same net


def test_cifar_stem_resnet18_has_11_173_962_parameters():
    assert count_params(on_meta("resnet18")) == 11_173_962
    assert count_params(on_meta("resnet18", 18)) == 11_173_962


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMS))
def test_plain_twins_are_the_resnet_minus_its_projections(depth, stem):
    b = on_meta(f"resnet{depth}", stem=stem)  # default B
    plain = on_meta(f"plain{depth}", stem=stem)
    assert projection_params(b) > 0 and not any("shortcut" in n for n, _ in plain.named_modules())
    assert count_params(plain) == count_params(b) - projection_params(b)
    assert count_params(plain) == count_params(on_meta(f"resnet{depth}", shortcut="A", stem=stem))
    assert count_params(on_meta(f"resnet{depth}", shortcut="C", stem=stem)) > count_params(b)


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_preact_option_a_has_the_original_resnets_parameters(depth):
    # BN moves from after each conv to before it, the stem BN becomes the final BN: same total
    assert count_params(on_meta("preact", depth)) == count_params(on_meta("resnet", depth, "A"))


def test_default_shortcuts_per_family():
    assert sum(".shortcut" in n and isinstance(m, nn.Conv2d) for n, m in on_meta("resnet34").named_modules()) == 3
    assert projection_params(on_meta("resnet", 20)) == 0  # CIFAR family: A
    assert projection_params(on_meta("preact", 20)) == 0
    assert count_params(on_meta("resnet", 20, "B")) == 269_722 + 2_752


def test_width_sets_the_first_stage_of_every_family():
    # the configs' `width` (64 for the ImageNet-style nets, as paper Table 1) doubles per stage
    assert count_params(on_meta("resnet18", width=64)) == count_params(on_meta("resnet18"))
    for args, width, out in ((("resnet18",), 32, 256), (("resnet50",), 32, 1024), (("plain34",), 8, 64),
                             (("resnet", 20), 8, 32), (("preact", 20), 8, 32)):
        model = on_meta(*args, width=width)
        assert model.conv1.out_channels == width and model.fc.in_features == out, args
        assert model.layer2[0].conv1.out_channels == 2 * width
    assert count_params(on_meta("resnet18", width=32)) < count_params(on_meta("resnet18")) // 3


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("args,kwargs,match", [
    (("resnet50", 34), {}, "resnet50 has depth 50"),
    (("plain18", 20), {}, "plain18 has depth 18"),
    (("resnet34", "34"), {}, "resnet34 has depth 34"),
    (("resnet18",), {"shortcut": "D"}, "choose one of A, B, C"),
    (("resnet18",), {"stem": "tiny"}, "unknown stem"),
    (("resnet", 20), {"stem": "imagenet"}, "ImageNet-style nets"),
    (("preact", 21), {}, "nearest valid: 20 or 26"),
    (("preact",), {}, "needs a depth"),
    (("resnet19",), {}, "choose one of plain, resnet, preact, resnet18"),
])
def test_bad_names_depths_and_stems_are_clear_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        on_meta(*args, **kwargs)


def test_a_zoo_config_with_a_wrong_depth_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="resnet34 has depth 34"):
        check_config(tiny_cfg(tmp_path, "model=resnet34", "model.depth=20"))
    assert not tmp_path.joinpath("single").exists()


# ---------------------------------------------------------------- forward / backward

def _finite_grads(model: nn.Module, size: int) -> None:
    torch.manual_seed(0)
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("arch", RESNETS + PLAINS)
def test_zoo_forward_backward_reaches_every_parameter(arch):
    _finite_grads(build_model(arch), 16)  # CIFAR stem, 16x16: maps 16/8/4/2


@pytest.mark.parametrize("shortcut", ["A", "B", "C"])
def test_preact_forward_backward_reaches_every_parameter(shortcut):
    _finite_grads(build_model("preact", 14, shortcut), 32)


def test_imagenet_stem_forward_backward():
    model = build_model("resnet18", stem="imagenet")
    assert isinstance(model.maxpool, nn.MaxPool2d) and model.conv1.kernel_size == (7, 7)
    _finite_grads(model, 32)


# ---------------------------------------------------------------- pre-activation block

def test_preact_identity_shortcut_is_clean():
    block = PreActBlock(16, 16, 1, "A").train()
    nn.init.zeros_(block.conv2.weight)  # residual branch is now exactly zero
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(block(x), x)  # no BN, no ReLU on the identity path, none after the addition


def test_preact_shortcuts_where_the_shape_changes():
    x = torch.randn(2, 16, 8, 8)
    a = PreActBlock(16, 32, 2, "A").eval()
    nn.init.zeros_(a.conv2.weight)
    with torch.no_grad():
        y = a(x)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and torch.count_nonzero(y[:, 16:]) == 0
    b = PreActBlock(16, 32, 2, "B")
    assert b.projects and isinstance(b.shortcut, nn.Conv2d) and b.shortcut.kernel_size == (1, 1)
    assert not PreActBlock(16, 16, 1, "B").projects and PreActBlock(16, 16, 1, "C").projects


def test_preact_net_layout():
    model = build_model("preact", 20)
    assert isinstance(model, PreActCifarNet) and not hasattr(model, "bn1")  # bare conv stem
    assert isinstance(model.bn_final, nn.BatchNorm2d) and model.bn_final.num_features == 64
    assert sum(isinstance(m, PreActBlock) for m in model.modules()) == 9


# ---------------------------------------------------------------- probe layers

def _response_inputs(model: nn.Module, size: int = 32):
    """For each response module: (the tensor it consumed, the tensor its conv produced)."""
    convs, responses = conv_layers(model), response_layers(model)
    seen = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(("conv", n), o)) for n, m in convs]
    hooks += [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(("resp", n), (i[0], o)))
              for n, m in responses]
    with torch.device("meta"):
        model(torch.randn(2, 3, size, size))
    for h in hooks:
        h.remove()
    return [(seen[("resp", rn)], seen[("conv", cn)]) for (rn, _), (cn, _) in zip(responses, convs)]


@pytest.mark.parametrize("arch,kwargs,n_convs", [
    ("resnet", dict(depth=20, shortcut="C"), 19), ("plain", dict(depth=20), 19),
    ("resnet18", {}, 17), ("plain34", {}, 33), ("resnet50", {}, 17), ("plain152", {}, 51),
    ("resnet50", dict(stem="imagenet"), 16),  # the 7x7 stem is not a 3x3 layer
    ("resnet34", dict(shortcut="A"), 33),
])
def test_post_activation_responses_are_the_bn_right_after_each_3x3_conv(arch, kwargs, n_convs):
    model = on_meta(arch, **kwargs)
    responses, convs = response_layers(model), conv_layers(model)
    assert len(responses) == len(convs) == n_convs
    assert all(isinstance(m, nn.BatchNorm2d) for _, m in responses)
    assert [n.rpartition(".")[0] for n, _ in responses] == [n.rpartition(".")[0] for n, _ in convs]
    for (bn_input, _), conv_output in _response_inputs(model):
        assert bn_input is conv_output  # the BN normalises exactly this conv's output


@pytest.mark.parametrize("depth,shortcut", [(8, "A"), (20, "B")])
def test_preact_responses_are_the_3x3_conv_outputs(depth, shortcut):
    model = on_meta("preact", depth, shortcut)
    responses, convs = response_layers(model), conv_layers(model)
    assert len(responses) == len(convs) == depth - 1
    assert [n for n, _ in responses] == [n for n, _ in convs]
    assert all(r is c for (_, r), (_, c) in zip(responses, convs))
    for (_, out), conv_output in _response_inputs(model):
        assert out is conv_output


# ---------------------------------------------------------------- names, configs, runs

def test_run_names_use_the_family_kind():
    assert [arch_kind(a) for a in ("resnet34", "plain50", "preact", "resnet", "plain")] == \
        ["resnet", "plain", "preact", "resnet", "plain"]
    assert run_name("resnet34", 34, "B") == "resnet-34-B"
    assert run_name("plain34", 34, "none") == "plain-34-none"
    assert run_name("preact", 110, "A") == "preact-110-A"
    assert run_name("plain", 20, "A") == "plain-20-none" and run_name("resnet", 56, "A") == "resnet-56-A"


@pytest.mark.parametrize("name", sorted(ZOO) + ["preact"])
def test_every_model_config_composes_and_checks(name, tmp_path):
    depth = 20 if name == "preact" else zoo_depth(name)
    cfg = tiny_cfg(tmp_path, f"model={name}", f"model.depth={depth}")  # TINY sets depth 8
    check_config(cfg)
    assert cfg.model.arch == name and arch_kind(name) in ("plain", "resnet", "preact")
    if name in ZOO:
        assert cfg.model.stem == "cifar" and cfg.model.shortcut == ("none" if name.startswith("plain") else "B")
        with torch.device("meta"):  # the config's width reaches the net: 64 as paper Table 1, or overridden
            assert build_from_config(cfg.model).conv1.out_channels == cfg.model.width == 64
            cfg.model.width = 16
            assert build_from_config(cfg.model).conv1.out_channels == 16


def test_new_experiments_use_the_paper_recipe():
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        for exp in ("imagenet_style", "preact"):
            cfg = compose("config", overrides=[f"experiment={exp}"])
            assert cfg.experiment_name == exp
            assert (cfg.schedule.iterations, cfg.optim.lr, cfg.optim.batch_size) == (64000, 0.1, 128)
            assert (cfg.optim.weight_decay, cfg.optim.momentum, cfg.data.source) == (1e-4, 0.9, "cifar10")


@pytest.mark.parametrize("exp,runs", [
    ("imagenet_style", ["plain-18-none", "plain-34-none", "resnet-18-A", "resnet-34-A"]),  # Table 2 pairs plain with A
    ("preact", ["preact-110-A", "preact-56-A", "resnet-110-A", "resnet-56-A"]),
])
def test_new_experiments_expand_to_exactly_their_runs(exp, runs):
    args = sweep_launch.parse_args(["--exp", exp, "--results", "/nonexistent-results"])
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        folders = []
        for overrides in sweep_request.expand(args):
            cfg = compose("config", overrides=overrides)
            check_config(cfg)
            folders.append(train_mod.folder_of(cfg).parent.name)
    assert sorted(folders) == runs


# The tiny recipe cut to three iterations of 8 images, evaluated on 16: the ImageNet-style nets are the
# suite's heaviest (11M parameters), and three small steps show the trainer runs them end to end.
THREE = ["schedule.iterations=3", "trainer.eval_every=3", "trainer.ckpt_every=3", "optim.batch_size=8",
         "data.num_eval=16", "trainer.eval_batch_size=16"]


@pytest.mark.parametrize("overrides,folder,expect", [
    (["model=preact", "model.depth=8"], "preact-8-A",
     dict(arch="preact", model_name="preact8", block="basic", shortcut="A", depth=8, params=78_042 - 2_752)),
    (["model=plain18", "model.depth=18"], "plain-18-none",
     dict(arch="plain", model_name="plain18", block="basic", shortcut="none", depth=18,
          params=11_173_962 - 172_032 - 1_792)),  # minus the 3 projections 64->128, 128->256, 256->512 (conv + BN)
    (["model=resnet18", "model.depth=18"], "resnet-18-B",
     dict(arch="resnet", model_name="resnet18", block="basic", shortcut="B", depth=18, params=11_173_962)),
])
def test_three_iterations_through_the_trainer(tmp_path, overrides, folder, expect):
    s = train_mod.run(tiny_cfg(tmp_path, *THREE, *overrides))
    assert s == summary(run_folder(tmp_path, folder))
    assert s["status"] == "completed" and s["iterations_done"] == 3 and s["stem"] == "cifar"
    assert {k: s[k] for k in expect} == expect
    assert len(s["response_layers"]) == expect["depth"] - 1
    assert all(x == x for x in (s["final_train_err"], s["final_test_err"]))  # numbers, not NaN


# ---------------------------------------------------------------- analysis labels

def test_preact_runs_get_their_own_panels_and_labels(tmp_path):
    for arch in ("resnet", "preact"):
        for depth in (20, 56):
            write_run(tmp_path, arch, depth, "A")
    results = collect(tmp_path)
    assert set(results.runs["arch"]) == {"resnet", "preact"}
    plots = {p.name: p for p in figures.build_all(results)}
    curves = plots["curves"].figure
    assert [ax.get_title() for ax in curves.axes] == ["ResNet (option A)", "pre-act ResNet (option A)"]
    labels = [line.get_label() for line in plots["responses"].figure.axes[0].lines]
    assert {"pre-act ResNet-20 (A)", "pre-act ResNet-56 (A)", "ResNet-20 (A)",
            "ResNet-56 (A)"} <= set(labels)
    styles = {line.get_label(): line.get_linestyle() for line in plots["responses"].figure.axes[0].lines}
    assert styles["pre-act ResNet-56 (A)"] == "-." and styles["ResNet-56 (A)"] == "-"  # told apart
    assert "pre-activation" in plots["responses"].caption
    assert plots["lr_schedule"].figure is not None
