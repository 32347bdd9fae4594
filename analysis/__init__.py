"""Reads what experiments/ writes (README, "Results on disk") and turns it into tables,
figures and a report: `python -m analysis.report --results results/<exp> [--figures-only]`.

collect -> tables / figures / findings -> render (report.md, report.html). Files only: of the
training side this package imports experiments.contract alone (the results format, standard library
only), so it runs on any machine that has the results, with or without torch.
"""
