"""`python -m experiments.sweep [--exp ...]`, what `make sweep` runs: the sweep's command, launch.main.

Its usage line names the command typed, as the console script's names `degradation-sweep` (argparse would
name this file)."""
import sys

from experiments.sweep.launch import main

sys.argv[0] = "python -m experiments.sweep"
sys.exit(main())
