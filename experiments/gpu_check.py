"""`python -m experiments.gpu_check` (`make gpu-check`, README): runs the tool in experiments/tools/gpu_check.py.

A shim kept for that documented command; it defines nothing and re-exports nothing."""
import runpy

if __name__ == "__main__":
    runpy.run_module("experiments.tools.gpu_check", run_name="__main__", alter_sys=True)
