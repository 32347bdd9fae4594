"""The training side of the suite: models, data, the training loop, the sweep driver."""
from pathlib import Path

# The Hydra configs: conf/ at the top of a checkout (and of an editable install); inside the package when
# installed from a wheel, where pyproject.toml maps conf/ to experiments/conf.
_HERE = Path(__file__).resolve().parent
CONF = _HERE / "conf" if (_HERE / "conf" / "config.yaml").is_file() else _HERE.parent / "conf"
