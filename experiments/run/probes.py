"""Cheap measurements beyond the error curves: layer responses (paper Fig. 7) and per-layer
gradient norms (how well gradients reach the early layers)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from experiments.models import conv_layers, response_layers


@torch.no_grad()
def evaluate(model, batches, autocast, eval_batch_size: int, with_responses: bool = False):
    """Loss and error (%) over the evaluation split; with `with_responses`, also the std of every
    3x3 layer's BN output (after BN, before ReLU / addition) over all of it. No host sync until the
    end: element counts are host integers, sums stay on the device."""
    layers = response_layers(model) if with_responses else []
    counts = [0] * len(layers)
    sums = [None] * len(layers)  # per layer: running (sum, sum of squares) on the device
    # Per-batch sums are fp32 (pairwise); accumulated in fp64 where the device has it (not MPS).
    acc_dtype = torch.float32 if batches.device.type == "mps" else torch.float64

    def hook(i):
        def record(_m, _inp, out):
            o = out.detach().float()
            s = torch.stack([o.sum(), o.square().sum()]).to(acc_dtype)
            counts[i] += o.numel()
            sums[i] = s if sums[i] is None else sums[i] + s
        return record

    handles = [m.register_forward_hook(hook(i)) for i, (_, m) in enumerate(layers)]
    was_training = model.training
    model.eval()
    loss_sum = wrong = n = 0
    try:
        for x, y in batches.eval_batches(eval_batch_size):
            with autocast():
                logits = model(x)
            loss_sum = loss_sum + F.cross_entropy(logits.float(), y, reduction="sum")
            wrong = wrong + (logits.argmax(1) != y).sum()
            n += len(y)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    result = {"test_loss": float(loss_sum) / n, "test_err": 100.0 * float(wrong) / n}
    if with_responses:
        stds = []
        for cnt, (s, sq) in zip(counts, torch.stack(sums).tolist()):  # one copy to the host for all layers
            mean = s / cnt
            stds.append(max(sq / cnt - mean * mean, 0.0) ** 0.5)
        result["response_std"] = stds
    return result


def gradient_norms(model, x, y, autocast) -> list[float]:
    """L2 norm of the loss gradient of every 3x3 conv weight on one fixed batch, in layer order.
    Runs on a copy in train mode so the real model's BN statistics and gradients are untouched."""
    probe = copy.deepcopy(model).train()
    probe.zero_grad(set_to_none=True)
    with autocast():
        loss = F.cross_entropy(probe(x).float(), y)
    loss.backward()
    return torch.stack([m.weight.grad.float().norm() for _, m in conv_layers(probe)]).tolist()  # one host copy
