"""`python -m experiments.lesion` (README): runs the tool in experiments/tools/lesion.py.

A shim kept for that documented command; it defines nothing and re-exports nothing."""
import runpy

if __name__ == "__main__":
    runpy.run_module("experiments.tools.lesion", run_name="__main__", alter_sys=True)
