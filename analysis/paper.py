"""The paper's reference numbers, as data, each with its source.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
arXiv:1512.03385. Only numbers printed in the paper live here; the analysis compares
against them and never types a result of its own.
"""
from __future__ import annotations

CITATION = "He et al. 2016, Deep Residual Learning for Image Recognition (arXiv:1512.03385)"

# Table 6: CIFAR-10 test error (%) of the residual nets (option A shortcuts), trained
# 64k iterations on the 50k training images, tested on the 10k test images.
TABLE6_TEST_ERR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
TABLE6_SOURCE = "Table 6 (CIFAR-10 test error, %)"

# ResNet-110 is printed as "best (mean +- std)" over 5 runs: 6.43 (6.61 +- 0.16). Where the
# paper gives a mean we compare our mean to it (like with like); elsewhere to the one number.
TABLE6_MEAN_STD = {110: (6.61, 0.16, 5)}

# Table 6 parameter counts, in millions, as printed (identical for plain and option A).
TABLE6_PARAMS_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7, 1202: 19.4}

# Sec. 4.2: "terminate training at 64k iterations" (the budget every report measures its runs against).
PAPER_ITERATIONS = 64000

# Table 3: ImageNet validation, ResNet-34, 10-crop top-1 error (%). The paper compares the
# shortcut options only on ImageNet; on CIFAR-10 our A/B/C ablation is new.
TABLE3_TOP1_ERR = {"plain": 28.54, "A": 25.03, "B": 24.52, "C": 24.19}
TABLE3_SOURCE = "Table 3 (ImageNet val, 34-layer nets, 10-crop top-1 error, %)"


def table6_reference(arch: str, shortcut: str, depth: int) -> dict | None:
    """The paper's Table 6 entry for this net, or None when the paper reports none.

    Table 6 covers residual nets with option A only; plain nets get no number there.
    """
    if arch != "resnet" or shortcut != "A" or depth not in TABLE6_TEST_ERR:
        return None
    printed = TABLE6_TEST_ERR[depth]
    if depth in TABLE6_MEAN_STD:
        mean, std, runs = TABLE6_MEAN_STD[depth]
        return {"printed": printed, "compare_to": mean,
                "basis": f"mean of {runs} runs ({mean} +- {std}); best {printed}"}
    return {"printed": printed, "compare_to": printed, "basis": "single number"}


def budget_fraction(iterations: float) -> float:
    """How much of the paper's 64k-iteration schedule a run planned."""
    return float(iterations) / PAPER_ITERATIONS
