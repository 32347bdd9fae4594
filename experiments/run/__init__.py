"""The parts of one run, which train.py puts together: the training loop and what it is made of.

    trainer.py       Trainer: model, data, optimiser, and `Trainer.fit`, a loop of labelled steps
    checks.py        the config's checks before anything is created (ConfigError: one line, no folder)
    resume_guard.py  what a run's numbers depend on, and the guard that refuses to continue a folder
                     computed under another config
    schedule.py      the paper's iteration-based learning-rate schedule, with its ResNet-110 warm-up
    stopping.py      stopping cleanly: a signal or a spent wall-clock budget is noted, the loop checkpoints
    probes.py        layer responses and gradient norms, beside the error curves
    graphs.py        the whole training step as one CUDA graph
    progress.py      what a run shows while it trains

Imports: its own files and the shared modules beside it (experiments.data, models, weights, device, contract,
faults, runfiles); never train.py, sweep/ or tools/, which stand above it and use some of these files too
(the sweep checks configs and budgets, the tools evaluate nets with probes.py).
"""
