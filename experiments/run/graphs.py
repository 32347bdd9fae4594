"""The whole training step as one CUDA graph (`trainer.cuda_graphs=true`, CUDA only, off by default).

ResNet-56 at batch 128 is about 800 kernel launches per step: on a fast GPU the CPU spends longer
launching them than the GPU spends running them. Captured once and replayed, the forward, backward
and optimizer step are one launch. What makes replay correct (PyTorch's "whole network capture"):

- static inputs: each batch is copied into the same two tensors the graph reads;
- the learning rate is a device tensor the graph reads, changed in place between replays (fused SGD
  takes it without a host sync; a float would be baked into the graph);
- momentum buffers exist before capture: zeros give exactly SGD's first step (buf = 0 * m + grad);
- the warm-up steps that capture needs (cuDNN autotuning, lazy allocations) run on a side stream and
  are then undone: weights, BN statistics and momentum return to their values before warm-up.

The batch itself (index, crop and flip offsets) is drawn outside the graph, from the run's
per-iteration generators, so batches stay a pure function of (seed, iteration) and resume stays
exact; it is ~15 launches of ~800. With `capture=False` the same object runs the step eagerly on its
static buffers: how the tests exercise this logic on a CPU.
"""
from __future__ import annotations

import torch

WARMUP_STEPS = 3  # PyTorch's docs warm up a few iterations before capture (autotuning, allocator)


class GraphedStep:
    def __init__(self, step, model: torch.nn.Module, opt: torch.optim.Optimizer, capture: bool = True):
        self.step, self.model, self.opt, self.capture = step, model, opt, capture
        self.static_x = self.static_y = self.out = self.graph = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on (x, y); returns (loss, wrong count) as fresh tensors (the graph's own
        outputs are overwritten by the next replay)."""
        if self.static_x is None:
            self._build(x, y)
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.out = self.step(self.static_x, self.static_y)
        return self.out[0].clone(), self.out[1].clone()

    def set_lr(self, lr: float) -> None:
        for g in self.opt.param_groups:
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(lr)  # in place: the graph reads this memory
            else:
                g["lr"] = lr

    def _build(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.static_x, self.static_y = x.clone(), y.clone()  # clone keeps x's layout (channels_last)
        dev = x.device
        for g in self.opt.param_groups:
            g["lr"] = torch.tensor(float(g["lr"]), dtype=torch.float32, device=dev)
        params = [p for g in self.opt.param_groups for p in g["params"]]
        for p in params:
            state = self.opt.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        saved_model = {k: v.clone() for k, v in self.model.state_dict().items()}
        saved_momentum = [self.opt.state[p]["momentum_buffer"].clone() for p in params]
        if self.capture:
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self.step(self.static_x, self.static_y)
            torch.cuda.current_stream(dev).wait_stream(side)
            self.opt.zero_grad(set_to_none=True)  # backward in the graph allocates grads from its pool
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.step(self.static_x, self.static_y)
        else:
            for _ in range(WARMUP_STEPS):
                self.step(self.static_x, self.static_y)
        with torch.no_grad():  # undo the warm-up in place: the graph holds these addresses
            for k, v in self.model.state_dict().items():
                v.copy_(saved_model[k])
            for p, m in zip(params, saved_momentum):
                self.opt.state[p]["momentum_buffer"].copy_(m)
