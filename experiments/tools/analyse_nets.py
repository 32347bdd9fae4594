"""`python -m experiments.analyse_nets --results results/<exp>` (`make analyse-nets EXP=...`): the lesion
study (lesion.py) and the 1D loss landscape (landscape.py) of every completed run
of an experiment that kept its weights, and the 2D landscape of its deepest plain / residual pair (the
same depth, the same seed where both have one). A file already computed with the same settings is
kept; completed runs without weights are named. The report (make report) draws what these files hold.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments.contract import FormatError, parse_run_name, parse_seed_name
from experiments.data import DataError
from experiments.tools import landscape, lesion
from experiments.tools.trained_run import OptionError, check_positive, common_options, completed_runs, open_from_args
from experiments.weights import WeightsError


def _net(run_dir: Path) -> tuple[str, int, str, int]:
    """(kind, depth, shortcut, seed) from the folder's name (the results contract)."""
    arch, depth, shortcut = parse_run_name(run_dir.parent.name) or ("?", 0, "?")
    return arch, depth, shortcut, parse_seed_name(run_dir.name) or 0


def deepest_pair(runs: list[Path]) -> list[Path]:
    """The plain run and the residual run (option A first, then B, C, then pre-activation) of the
    deepest depth that has both, on their lowest common seed (else each its lowest); [] if none."""
    def rank(run):
        arch, _, shortcut, seed = _net(run)
        return ({"resnet": 0, "preact": 1}.get(arch, 2), shortcut, seed)

    plain = [r for r in runs if _net(r)[0] == "plain"]
    residual = sorted((r for r in runs if _net(r)[0] in ("resnet", "preact")), key=rank)
    for depth in sorted({_net(r)[1] for r in plain} & {_net(r)[1] for r in residual}, reverse=True):
        deep_plain = sorted((r for r in plain if _net(r)[1] == depth), key=lambda r: _net(r)[3])
        best = next(r for r in residual if _net(r)[1] == depth)
        family = [r for r in residual if _net(r)[1] == depth and _net(r)[:3] == _net(best)[:3]]
        common = sorted({_net(r)[3] for r in deep_plain} & {_net(r)[3] for r in family})
        if common:
            return [next(r for r in deep_plain if _net(r)[3] == common[0]),
                    next(r for r in family if _net(r)[3] == common[0])]
        return [deep_plain[0], family[0]]
    return []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.analyse_nets", description=__doc__.splitlines()[0])
    p.add_argument("--results", required=True, type=Path, help="an experiment folder, e.g. results/degradation")
    lesion.add_options(p)
    landscape.add_options(p)
    common_options(p)
    args = p.parse_args(argv)
    if not any((args.results / "runs").glob("*/seed=*")):
        print(f"error: no runs under {args.results / 'runs'}; run `make sweep` for this experiment first, or "
              f"give RESULTS= the folder that holds it", file=sys.stderr)
        return 2
    runs, without = completed_runs(args.results)
    if without:
        print(f"no weights.safetensors (completed before the suite kept weights; a sweep rerun writes them from "
              f"last.pt where it remains): {', '.join(f'{r.parent.name}/{r.name}' for r in without)}")
    if not runs:
        print(f"nothing to measure: no completed run under {args.results / 'runs'} has weights")
        return 0
    pair = deepest_pair(runs)
    print(f"{len(runs)} run(s) with weights: lesion study and 1D landscape each"
          + (f"; 2D landscape of {' and '.join(r.parent.name for r in pair)}" if pair else ""))
    failed = 0
    try:
        landscape.check_options(args)
        check_positive(args, "eval_images", "max_k", "draws")
        for run_dir in runs:
            try:
                run = open_from_args(args, run_dir)
                out, computed = lesion.measure(run, args.eval_images, args.max_k, args.draws, args.lesion_seed,
                                               args.force)
                print(f"{run.name} lesion: {'computed' if computed else 'up to date'}: {lesion.describe(out)}")
                out, computed = landscape.measure(run, args.points, args.grid if run_dir in pair else None,
                                                  args.subset, args.direction_seed, args.span, args.force)
                print(f"{run.name} landscape: {'computed' if computed else 'up to date'}: "
                      f"{landscape.describe(out)}")
            except (WeightsError, FormatError) as e:  # this run's files: say so, go on with the others
                print(f"error: {e}", file=sys.stderr)
                failed += 1
    except (DataError, OptionError) as e:  # every run would fail alike
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
