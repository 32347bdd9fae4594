"""Many runs of one experiment: `make sweep` (`python -m experiments.sweep`) plans a Hydra multirun, prints
it, launches `python -m experiments.train --multirun` and reports every run.

    request.py   what a sweep asks for: its Hydra overrides, the runs they expand to, SweepError
    plan.py      PlannedRun: every run with its state on disk and its cost; plan.json; its data, checked once
    status.py    what it shows: the plan with time estimates, the final table and the exit status
    launch.py    the command: its options, the launch, the time budget, `main` (the console script's)
    __main__.py  `python -m experiments.sweep`: runs launch.main

Inside, imports go one way: launch -> status -> plan -> request. Outside it: train.py (a run's folder, and
the file through which its jobs report errors), run/ (checks, resume_guard, stopping) and the shared modules;
never tools/. Nothing in the package imports the sweep.
"""
