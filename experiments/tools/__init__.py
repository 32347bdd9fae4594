"""The measuring tools: what the suite measures besides the training curves.

    bench.py         `make bench`: training throughput of the suite vs a conventional PyTorch pipeline
    gpu_check.py     `make gpu-check`: what the GPU path needs measured, in one command on one GPU
    evaluate.py      the test error of a completed run's trained net
    trained_run.py   a completed run's net, data and device, for the two tools below and their JSON files
    lesion.py        the lesion study of a trained net (lesion.json beside its weights)
    landscape.py     the loss landscape around a trained net (landscape.json)
    analyse_nets.py  `make analyse-nets`: both of them for every completed run of an experiment

Each is a command, `python -m experiments.<tool>`, through a shim of that name beside train.py. Imports:
each other, train.py (the loaded commit, one run in process), run/ (Trainer, probes, resume_guard) and the
shared modules; never sweep/. Nothing outside tools/ imports them.
"""
