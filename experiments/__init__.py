"""The training side of the suite: it trains the nets and measures them; analysis/ reads what it writes.

    sweep/     many runs of one experiment (`make sweep`)
    tools/     the measuring tools; each is also a command `python -m experiments.<tool>`, through a
               shim of that name in this folder (bench, gpu_check, evaluate, lesion, landscape, analyse_nets)
    train.py   one run, the Hydra entry point (`python -m experiments.train`)
    run/       the parts of one run: the training loop and what it is made of
    data/, models.py, weights.py, device.py, runfiles.py, contract.py, faults.py
               the shared modules, which all of the above use; contract.py is the results format (standard
               library only), the one module that analysis/ imports from here

Imports go down this list only: sweep/ and tools/ may import train.py, run/ and the shared modules (never
each other); train.py imports run/ and the shared modules; run/ the shared modules; those none of the others.
Nothing here imports analysis/.
"""
from pathlib import Path

# The Hydra configs: conf/ at the top of a checkout (and of an editable install); inside the package when
# installed from a wheel, where pyproject.toml maps conf/ to experiments/conf.
_HERE = Path(__file__).resolve().parent
CONF = _HERE / "conf" if (_HERE / "conf" / "config.yaml").is_file() else _HERE.parent / "conf"
