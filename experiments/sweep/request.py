"""What a sweep asks for, as Hydra reads it: `make sweep`'s options and ARGS as Hydra overrides, the runs they
expand to (Hydra's basic sweeper over the experiment's `hydra.sweeper.params`), the seeds ARGS names, and
SweepError, the one line that a request a user can fix ends with. The sweep's lowest file: it imports none of
the others."""
from __future__ import annotations

from itertools import takewhile

from hydra import compose
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, OverrideParseException
from omegaconf import OmegaConf

from experiments.device import available_cores
from experiments.runfiles import hydra_quote


class SweepError(Exception):
    """A sweep request a user can fix; printed as one line."""


def base_overrides(args) -> list[str]:
    """What `make sweep` hands to Hydra, in order: its own choices, then ARGS (so hydra.launcher.* refines the
    launcher), then SEEDS as a seed list unless ARGS names the seeds itself."""
    # Paths are quoted for Hydra: a comma, a space or a non-ASCII letter is part of the path, not grammar.
    out = [f"experiment={args.exp}", f"results_dir={hydra_quote(args.results)}"]
    if args.data:
        out.append(f"data={args.data}")  # checked by parse_args: a name of conf/data/, never a path
    if args.data_root:
        out.append(f"data.root={hydra_quote(args.data_root)}")
    if args.jobs > 1 and args.launcher in ("joblib",):
        out.append(f"trainer.threads={max(1, available_cores() // args.jobs)}")  # share the cores
    if args.launcher != "basic":  # chosen before the user's overrides, so hydra.launcher.* can refine it
        out.append(f"hydra/launcher={args.launcher}")
    if args.launcher == "joblib":
        out.append(f"hydra.launcher.n_jobs={args.jobs}")
    out += list(args.overrides)
    if seeds_from_args(args) is None:
        out.append(f"seed={','.join(str(s) for s in range(args.seeds))}")
    return out


def parse_overrides(overrides: list[str]) -> list[Override]:
    # Inside initialize_config_dir the parser gets Hydra's config loader, so glob(...) can list config groups.
    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    try:
        return OverridesParser.create(config_loader=loader).parse_overrides(list(overrides))
    except OverrideParseException as e:
        raise SweepError(f"ARGS: {str(e).splitlines()[0]}; write Hydra overrides as key=value (a,b for a sweep)") from None


def seeds_from_args(args) -> str | None:
    """The seed override in ARGS (e.g. `seed=3` or `seed=0,5`), which replaces SEEDS; None if ARGS has none."""
    named = [o for o in parse_overrides(args.overrides) if o.get_key_element() == "seed"]
    return named[-1].input_line if named else None


def hydra_sweep(task_overrides: list[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes from these task overrides (the experiment's
    hydra.sweeper.params first, then the command line's): the cartesian product of every comma list,
    a later value of a key replacing an earlier one in place. Hydra's private API, used here only;
    tests/test_sweep.py pins its behaviour."""
    return BasicSweeper.split_arguments(parse_overrides(task_overrides), None)[0]


def split_hydra(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(hydra overrides: hydra.* and hydra/..., applied to every job; task overrides: what the sweeper combines)."""
    parsed = parse_overrides(overrides)
    return ([o.input_line for o in parsed if o.is_hydra_override()],
            [o.input_line for o in parsed if not o.is_hydra_override()])


def expand(args) -> list[list[str]]:
    """Every run of the sweep as the overrides that compose it, in Hydra's order (call inside initialize)."""
    hydra_part, task = split_hydra(base_overrides(args))
    fixed = [o.input_line for o in parse_overrides(task) if not o.is_sweep_override()]
    cfg = compose("config", overrides=hydra_part + fixed, return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params or {}, resolve=False)
    return [hydra_part + job for job in hydra_sweep([f"{k}={v}" for k, v in params.items()] + task)]


def hydra_error(e: HydraException) -> str:
    """Hydra's multi-line message as one line: its first line, the options it lists, its hint."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
    listed = next((i for i, line in enumerate(lines) if line.startswith("Available options")), None)
    if listed is not None:
        options = takewhile(lambda line: not line.startswith("Config search path"), lines[listed + 1:])
        return f"{lines[0]}; choose one of {', '.join(options)}"
    hint = next((line for line in lines[1:] if line.startswith(("To append", "2. To use it as string"))), None)
    hint = hint and hint.removeprefix("2. ")
    return lines[0].rstrip(".") + (f"; {hint[0].lower()}{hint[1:]}" if hint else "")


def check_overrides(args) -> None:
    """A malformed ARGS override (`optim.lr=[0.1`, `foo`) as one line naming it."""
    parser = OverridesParser.create()
    for override in args.overrides:
        try:
            parser.parse_override(override)
        except HydraException as e:
            raise SweepError(f"ARGS override {override!r} is not valid Hydra syntax "
                             f"({str(e).splitlines()[0].strip()}); write it as key=value, quoting values with "
                             f"special characters: key='value'") from None
