"""The networks of He et al. 2016: the CIFAR-10 plain and residual nets of Sec. 4.2 (depth 6n+2)
and beyond them, built the way torchvision's resnet.py is (one stage builder, one init).

Plain and residual nets are built from the same blocks; the only difference is whether a
block adds a shortcut (Sec. 3.3 options A/B/C) before its final ReLU. So a plain net and a
residual net with option A have exactly the same layers and parameters. Beyond the paper's
CIFAR family (`plain`, `resnet`):
- `preact`: the pre-activation net of He et al. 2016b ("Identity Mappings"), any 6n+2 depth.
- `resnet18/34/50/101/152` (paper Table 1; BasicBlock or Bottleneck, stride on the 3x3 conv as
  torchvision v1.5) and their plain twins `plain18 ... plain152`, with a CIFAR stem (3x3 conv,
  no max-pool) or `stem="imagenet"`; with 1000 classes and that stem the parameter counts equal
  torchvision's resnet18..152 exactly.
Every net is named by a family kind ('plain' | 'resnet' | 'preact', see `contract.arch_kind`), which
is what run folders and the analysis group by.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from experiments.contract import SHORTCUTS, arch_kind  # the kind names a run's folder (the results contract)

CIFAR_ARCHS = ("plain", "resnet", "preact")  # depth 6n+2
# ImageNet-style nets (paper Table 1): name -> (block, blocks per stage). Depth = the name's number.
ZOO = {
    "resnet18": ("basic", (2, 2, 2, 2)), "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)), "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
ZOO.update({"plain" + name[6:]: spec for name, spec in list(ZOO.items())})  # plain18 ... plain152
ARCHS = CIFAR_ARCHS + tuple(ZOO)
STEMS = ("cifar", "imagenet")
# Filters of the first stage (stem included); each later stage doubles them. 16 is the paper's
# CIFAR net (16/32/64, Sec. 4.2), 64 its Table 1 nets (64/128/256/512, x4 out for Bottleneck).
DEFAULT_WIDTH = {"cifar": 16, "zoo": 64}


def blocks_per_stage(depth: int) -> int:
    """n for depth = 6n + 2, or a ValueError naming the nearest valid depths."""
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise ValueError(f"depth must be an integer of the form 6n+2 (20, 32, 44, 56, 110, ...), got {depth!r}")
    if depth < 8 or (depth - 2) % 6:
        below = (depth - 2) // 6 * 6 + 2
        hint = "8" if below < 8 else f"{below} or {below + 6}"
        raise ValueError(
            f"depth {depth} is not 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, 1202, ...); "
            f"nearest valid: {hint}"
        )
    return (depth - 2) // 6


class ZeroPadShortcut(nn.Module):
    """Option A: identity, subsampled by `stride`, with zero channels appended (no parameters)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.extra, self.stride = out_ch - in_ch, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # F.pad pads from the last dim backwards: (W, W, H, H, C_before, C_after).
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def make_shortcut(shortcut: str | None, in_ch: int, out_ch: int, stride: int, bn: bool = True) -> nn.Module | None:
    """The shortcut of a block (Sec. 3.3): none in a plain net; a 1x1 conv projection (Eqn. 2)
    for option C, and for B where the shape changes, followed by BN unless `bn` is False (the
    pre-activation nets); otherwise the identity, zero-padded where the shape changes (A)."""
    if shortcut is None:
        return None
    reshapes = stride != 1 or in_ch != out_ch
    if shortcut == "C" or (shortcut == "B" and reshapes):
        conv = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(out_ch)) if bn else conv
    return ZeroPadShortcut(in_ch, out_ch, stride) if reshapes else nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; y = relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    expansion = 1  # output channels per unit of stage width (torchvision's name)

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str | None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = make_shortcut(shortcut, in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class Bottleneck(nn.Module):
    """1x1 (reduce) - 3x3 - 1x1 (expand x4), conv-BN each, ReLU after the first two and after
    the addition; the stride sits on the 3x3 conv (torchvision's "v1.5")."""

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int, shortcut: str | None):
        super().__init__()
        out_ch = planes * self.expansion
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = make_shortcut(shortcut, in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class PreActBlock(nn.Module):
    """He et al. 2016b: y = x' + conv(relu(bn(conv(relu(bn(x)))))), no ReLU after the addition.

    The identity shortcut x' is left clean: x itself (option A: x subsampled and zero-padded).
    A projection shortcut (B where the shape changes, C everywhere) is a 1x1 conv, without BN,
    applied to the pre-activated input relu(bn1(x)), as the authors' code does."""

    expansion = 1

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.shortcut = make_shortcut(shortcut, in_ch, out_ch, stride, bn=False)
        self.projects = isinstance(self.shortcut, nn.Conv2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(pre))))
        return out + self.shortcut(pre if self.projects else x)


Block = type[BasicBlock] | type[Bottleneck] | type[PreActBlock]


def make_stages(net: nn.Module, block: Block, in_ch: int, width: int, layers: tuple[int, ...],
                shortcut: str | None) -> int:
    """Adds the stages as net.layer1, net.layer2, ... (torchvision's `_make_layer`): stage i has
    layers[i] blocks at width * 2**i filters (x block.expansion out); the first block of every
    stage but the first subsamples by 2 (paper Sec. 3.4 and 4.2). Returns the output channels."""
    for i, n in enumerate(layers):
        planes, blocks = width * 2 ** i, []
        for j in range(n):
            blocks.append(block(in_ch, planes, 2 if i > 0 and j == 0 else 1, shortcut))
            in_ch = planes * block.expansion
        setattr(net, f"layer{i + 1}", nn.Sequential(*blocks))
    return in_ch


def he_init(net: nn.Module) -> None:
    """He initialisation (paper ref. [13]) of every conv, BN as identity; as torchvision does it."""
    if next(net.parameters()).is_meta:  # no values to set (config checks build on meta), and normal_ there
        return                          # imports torch._dynamo: 2 s of every sweep plan
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}  # ZOO's block names


class ResNet(nn.Module):
    """Post-activation nets, residual or plain (`shortcut=None`): a conv-BN-ReLU stem, stages of
    blocks (make_stages), global average pool, FC. The paper's CIFAR net (Sec. 4.2) is
    BasicBlock x (n, n, n) at width 16 with the 3x3 stem; paper Table 1 / torchvision's ResNet is
    BasicBlock or Bottleneck x 4 stages at width 64, with the 3x3 stem for 32x32 inputs or the
    7x7/2 conv + 3x3/2 max-pool ImageNet stem (224 -> 56)."""

    def __init__(self, block: Block, layers: tuple[int, ...], shortcut: str | None, num_classes: int,
                 width: int, stem: str = "cifar"):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.num_stages = len(layers)
        self.fc = nn.Linear(make_stages(self, block, width, width, layers, shortcut), num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class PreActCifarNet(nn.Module):
    """The CIFAR net of Sec. 4.2 with pre-activation blocks: a bare 3x3 conv stem (the first
    block's BN-ReLU follows it), 3n blocks at 16/32/64 filters, a final BN-ReLU, pool, FC.
    With option A it has exactly the parameters of the original ResNet of the same depth."""

    # The 'response' of a 3x3 layer (paper Fig. 7) is the conv's own output: no BN follows a conv
    # here, and the second conv's output is exactly the residual function added to the stream.
    response_is_conv_output = True

    def __init__(self, n: int, shortcut: str, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        out_ch = make_stages(self, PreActBlock, width, width, (n, n, n), shortcut)
        self.bn_final = nn.BatchNorm2d(out_ch)
        self.fc = nn.Linear(out_ch, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        x = F.relu(self.bn_final(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def zoo_depth(arch: str) -> int:
    """Weighted layers of an ImageNet-style net: stem + 2 (basic) or 3 (bottleneck) per block + FC."""
    block, layers = ZOO[arch]
    return (2 if block == "basic" else 3) * sum(layers) + 2


def default_shortcut(arch: str) -> str:
    """A for the paper's CIFAR family (its choice there); B for the ImageNet-style nets
    (projections where dimensions change, as torchvision and the paper's Bottleneck nets)."""
    return "B" if arch in ZOO else "A"


def model_name(arch: str, depth: int | None = None) -> str:
    """'resnet34', 'plain50', and for the CIFAR family '<arch><depth>' ('resnet56', 'preact110')."""
    return arch if arch in ZOO else f"{arch}{depth}"


def block_name(arch: str) -> str:
    return ZOO[arch][0] if arch in ZOO else "basic"


def build_model(
    arch: str, depth: int | None = None, shortcut: str | None = None, num_classes: int = 10,
    width: int | None = None, stem: str = "cifar",
) -> nn.Module:
    """A net by name. `arch` is 'plain' | 'resnet' | 'preact' (the CIFAR family, `depth` = 6n+2
    required) or one of resnet18/34/50/101/152 and plain18 ... plain152 (`depth` implied by the
    name: omit it or give the same number). `width` is the filters of the first stage, doubled
    per stage; None means the paper's (16 for the CIFAR family, 64 for the others). `shortcut`
    None means the family's default (`default_shortcut`); it is ignored for plain nets. `stem`
    'imagenet' (7x7/2 conv + 3x3/2 max-pool) exists for the ImageNet-style nets only."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    kind = arch_kind(arch)
    shortcut = default_shortcut(arch) if shortcut is None else shortcut
    if kind != "plain" and shortcut not in SHORTCUTS:
        raise ValueError(f"unknown shortcut option {shortcut!r}; choose one of {', '.join(SHORTCUTS)}")
    width = DEFAULT_WIDTH["zoo" if arch in ZOO else "cifar"] if width is None else width
    if not isinstance(width, int) or width < 1 or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"width ({width!r}) and num_classes ({num_classes!r}) must be positive integers")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {', '.join(STEMS)}")
    shortcut = None if kind == "plain" else shortcut
    if arch in ZOO:
        implied = zoo_depth(arch)
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth != implied):
            raise ValueError(f"{arch} has depth {implied}, got depth={depth!r}; omit depth or set it to {implied}")
        block, layers = ZOO[arch]
        return ResNet(BLOCKS[block], layers, shortcut, num_classes, width, stem)
    if stem != "cifar":
        raise ValueError(f"stem {stem!r} exists for the ImageNet-style nets (resnet18 ...) only; "
                         f"{arch} has the paper's CIFAR stem")
    if depth is None:
        raise ValueError(f"{arch} needs a depth of the form 6n+2 (20, 32, 44, 56, 110, ...)")
    n = blocks_per_stage(depth)
    if arch == "preact":
        return PreActCifarNet(n, shortcut, num_classes, width)
    return ResNet(BasicBlock, (n, n, n), shortcut, num_classes, width)


def build_from_config(model_cfg, **kwargs) -> nn.Module:
    """The net a `model:` config group names (conf/model/*.yaml): arch, depth, shortcut
    ('none' for plain nets), width and an optional stem (default cifar)."""
    m = model_cfg
    shortcut = None if arch_kind(m.arch) == "plain" else m.shortcut
    return build_model(m.arch, m.depth, shortcut, width=m.width, stem=m.get("stem", "cifar"), **kwargs)


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every 3x3 conv in layer order (the layers of paper Fig. 7; projection shortcuts, the
    Bottleneck 1x1 convs and a 7x7 ImageNet stem are not 3x3), matching `response_layers`."""
    return [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ]


def response_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """One module per 3x3 conv, in layer order, whose output is that layer's response (what paper
    Fig. 7 measures, with a forward hook). Post-activation nets (plain, resnet, the ImageNet-style
    family): the BN right after each 3x3 conv (convK -> bnK in the same block), i.e. after BN,
    before the ReLU / addition. Pre-activation nets (`preact`): no BN follows a conv, so the
    response is the 3x3 conv's output itself; for a block's second conv that is the residual
    function F(x) added to the identity path."""
    convs = conv_layers(model)
    if getattr(model, "response_is_conv_output", False):
        return convs
    out = []
    for name, _ in convs:
        parent, _, leaf = name.rpartition(".")
        bn_name = (parent + "." if parent else "") + leaf.replace("conv", "bn")
        out.append((bn_name, model.get_submodule(bn_name)))
    return out


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> int:
    """Multiply-accumulates for one image: every conv and linear layer's, from the shapes of one forward
    pass (BN, ReLU, pooling and the zero-pad shortcut count nothing, as in the paper). The same number as
    half of torch's FlopCounterMode FLOPs (tests/test_models.py holds them equal for every family), without
    its import of torch._dynamo (2 s of every sweep plan). Runs on the model's device, meta included."""
    macs = 0

    def count(m: nn.Module, _inp, out: torch.Tensor) -> None:
        nonlocal macs
        per_output = m.in_features if isinstance(m, nn.Linear) else m.weight[0].numel()  # conv: in/groups x k x k
        macs += out.numel() * per_output

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(count) for m in layers]
    was_training = model.training
    p = next(model.parameters())
    try:
        model.eval()
        model(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return macs
