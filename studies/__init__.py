"""Studies: grids of federated runs on the simulation engine, and their tables.

The privacy–utility study, the time-series accuracy study and the fairness
comparison each run their cells through :mod:`fedge.studies.study_cell` (one
``fedge simulate`` run folder a cell) and write results under
``benchmarks/results/`` and a Markdown table beside their module;
:mod:`fedge.studies.dp_quick_check` tries DP settings in process. The product
code they measure lives in ``server/``, ``client/`` and ``simulations/``.
"""
