import pytest
import torch

from experiments.models import (
    BasicBlock, ZeroPadShortcut, build_model, conv_layers, count_macs, count_params, response_layers,
)

PAPER_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}


def params_on_meta(*args) -> int:
    with torch.device("meta"):  # no memory, no init cost: counting ResNet-1202 stays cheap
        return count_params(build_model(*args))


@pytest.mark.parametrize("depth", sorted(PAPER_PARAMS))
def test_parameter_counts_match_the_paper_exactly(depth):
    a = params_on_meta("resnet", depth, "A")
    assert a == PAPER_PARAMS[depth]
    assert params_on_meta("plain", depth) == a
    b = params_on_meta("resnet", depth, "B")
    assert b == a + 2_752
    assert params_on_meta("resnet", depth, "C") > b


@pytest.mark.parametrize("depth,macs", [(20, 40.55e6), (56, 125.49e6), (110, 252.89e6)])
def test_macs_match_the_derivation(depth, macs):
    assert round(count_macs(build_model("resnet", depth)) / 1e4) == round(macs / 1e4)


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0


@pytest.mark.parametrize("shortcut", ["A", "B", "C"])
def test_zeroed_residual_branch_computes_relu_of_shortcut(shortcut):
    block = BasicBlock(16, 32, 2, shortcut).eval()
    torch.nn.init.zeros_(block.bn2.weight)  # residual branch output is now exactly zero
    torch.nn.init.zeros_(block.bn2.bias)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert torch.allclose(block(x), torch.relu(block.shortcut(x)))


def test_plain_blocks_have_no_shortcut_path():
    model = build_model("plain", 20)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9 and all(b.shortcut is None for b in blocks)
    assert not any("shortcut" in name for name, _ in model.named_modules())


@pytest.mark.parametrize("depth", [8, 20])
@pytest.mark.parametrize("arch,shortcut", [("plain", "A"), ("resnet", "A"), ("resnet", "B"), ("resnet", "C")])
def test_forward_backward_reaches_every_parameter(arch, shortcut, depth):
    torch.manual_seed(0)
    model = build_model(arch, depth, shortcut)
    logits = model(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_probe_layers_are_every_3x3_conv_in_order():
    model = build_model("resnet", 20, "C")
    responses, convs = response_layers(model), conv_layers(model)
    assert len(responses) == len(convs) == 19  # the stem + 18 block convs
    assert [n.replace("bn", "conv") for n, _ in responses] == [n for n, _ in convs]


@pytest.mark.parametrize("kwargs,match", [
    (dict(arch="resnet", depth=21), "nearest valid: 20 or 26"),
    (dict(arch="resnet", depth=0), "nearest valid: 8"),
    (dict(arch="resnet", depth="56"), "integer"),
    (dict(arch="resnett", depth=20), "choose one of plain, resnet"),
    (dict(arch="resnet", depth=20, shortcut="D"), "choose one of A, B, C"),
    (dict(arch="resnet", depth=20, width=0), "positive"),
])
def test_bad_input_gets_an_actionable_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(**kwargs)
