"""The CIFAR-10 networks of He et al. 2016, Sec. 4.2: plain and residual nets of depth 6n+2.

Plain and residual nets are built from the same blocks; the only difference is whether a
block adds a shortcut (Sec. 3.3 options A/B/C) before its final ReLU. So a plain net and a
residual net with option A have exactly the same layers and parameters.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ARCHS = ("plain", "resnet")
SHORTCUTS = ("A", "B", "C")
STAGE_WIDTHS = (1, 2, 4)  # 16, 32, 64 filters for the paper's base width of 16


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


def projection(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """Options B and C: 1x1 convolution + BN (Sec. 3.3, Eqn. 2)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
    )


def make_shortcut(shortcut: str | None, in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    if shortcut is None:  # plain net: no shortcut path at all
        return None
    reshapes = stride != 1 or in_ch != out_ch
    if shortcut == "C" or (shortcut == "B" and reshapes):
        return projection(in_ch, out_ch, stride)
    if shortcut == "A" and reshapes:
        return ZeroPadShortcut(in_ch, out_ch, stride)
    return nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers; y = relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

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


class CifarNet(nn.Module):
    """3x3 conv stem, three stages of n blocks at 16/32/64 filters, global pool, FC."""

    def __init__(self, n: int, shortcut: str | None, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, in_ch = [], width
        for i, mult in enumerate(STAGE_WIDTHS):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1  # subsample at the first conv of stages 2, 3
                blocks.append(BasicBlock(in_ch, width * mult, stride, shortcut))
                in_ch = width * mult
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():  # He initialisation (paper ref. [13]), as torchvision does it
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_model(
    arch: str, depth: int, shortcut: str = "A", num_classes: int = 10, width: int = 16
) -> nn.Module:
    """A plain or residual CIFAR net of the paper; `shortcut` is ignored for plain nets."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if arch == "resnet" and shortcut not in SHORTCUTS:
        raise ValueError(f"unknown shortcut option {shortcut!r}; choose one of {', '.join(SHORTCUTS)}")
    if not isinstance(width, int) or width < 1 or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"width ({width!r}) and num_classes ({num_classes!r}) must be positive integers")
    n = blocks_per_stage(depth)
    return CifarNet(n, shortcut if arch == "resnet" else None, num_classes, width)


def shortcut_name(arch: str, shortcut: str) -> str:
    """How a run records its shortcut: the option for resnets, 'none' for plain nets."""
    return shortcut if arch == "resnet" else "none"


def response_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """Every 3x3 conv's BN, in layer order: its output (before ReLU / addition) is what
    paper Fig. 7 measures. Projection-shortcut BNs are excluded (they follow 1x1 convs)."""
    return [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d) and ".shortcut" not in name
    ]


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every 3x3 conv in layer order, matching `response_layers` one to one."""
    return [
        (name, m) for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 32, 32)) -> int:
    """Multiply-accumulates of conv and linear layers for one image, measured by a forward
    pass (BN, ReLU, pooling and the zero-pad shortcut are not counted, as in the paper)."""
    macs = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal macs
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        macs += out[0].numel() * k

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal macs
        macs += out[0].numel() * m.in_features

    handles = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    was_training = model.training
    try:
        model.eval()
        p = next(model.parameters())
        model(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return macs
