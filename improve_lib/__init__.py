"""The IMPROVE study's library, one subpackage per layer, in the order a run passes through them.

``core`` (foundations: errors, files, checks, the machine, the run folder) ← ``data`` (01) ←
``conditioning`` (02-03) ← ``diffusion`` (04-05) ← ``metrics`` (06) ← ``plausibility`` (07) ←
``report`` (tables, figures, sweep comparison, results folders; 08) ← ``runs`` (parameters, the pipeline,
sweeps, the command line). A module imports only from its own layer or the layers before it
(``tests/architecture/test_layers.py``); ``docs/ARCHITECTURE.md`` draws the layers and the data flow.
"""
