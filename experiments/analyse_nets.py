"""`python -m experiments.analyse_nets` (`make analyse-nets`, README): runs experiments/tools/analyse_nets.py.

A shim kept for that documented command; it defines nothing and re-exports nothing."""
import runpy

if __name__ == "__main__":
    runpy.run_module("experiments.tools.analyse_nets", run_name="__main__", alter_sys=True)
