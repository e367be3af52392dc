"""The functions behind ``fedge simulate``, ``fedge export`` and ``fedge verify``.

Each is the command's own code path with keyword arguments named like the
command's flags (``--dp-mode`` is ``dp_mode=``), returning objects rather
than printing: :func:`simulate` a :class:`~fedge.run.Run`, :func:`export` a
:class:`~fedge.edge_export.manifest.Manifest`, :func:`verify` a
:class:`~fedge.edge_export.manifest.VerifyReport`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedge.run import Run, RunPath

if TYPE_CHECKING:
    from fedge.edge_export.manifest import Manifest, VerifyReport


def simulate(
    *,
    clients: int | None = None,
    rounds: int | None = None,
    dataset: str | None = None,
    partitioning: str | None = None,
    alpha: float | None = None,
    strategy: str | None = None,
    dp_mode: str | None = None,
    target_epsilon: float | None = None,
    model: str | None = None,
    data: RunPath | None = None,
    node_data: RunPath | None = None,
    eval_data: RunPath | None = None,
    label_column: str | None = None,
    partition_by: str | None = None,
    scenario: RunPath | None = None,
    set: Mapping[str, Any] | None = None,  # named as the --set flag
    output_dir: RunPath | None = None,
    run_name: str = "",
    cpus_per_client: int | None = None,
    ray_address: str | None = None,
    verbose: bool = False,
    progress: bool = True,
) -> Run:
    """Run a federation of virtual clients on this machine, as ``fedge simulate`` does.

    The fedge ServerApp and ClientApp run on Flower's simulation engine; each
    keyword is the flag of the same name (None: the scenario's value, else the
    run config's default in ``pyproject.toml``). Later sources win: the
    scenario file, then the named keywords, then ``set``.

    Parameters
    ----------
    clients : int, optional
        Virtual clients (default: the scenario's, else 10; your own data may
        decide, e.g. ``partition_by``).
    rounds : int, optional
        Server rounds (``num-server-rounds``).
    dataset : str, optional
        A built-in dataset (``digits``, ``breast-cancer``, ``synthetic``, ...)
        or ``file``.
    partitioning : {"iid", "dirichlet", "shards"}, optional
        How the data is split over clients.
    alpha : float, optional
        Dirichlet concentration α (``dirichlet-alpha``).
    strategy : str, optional
        Aggregation strategy (``fedavg``, ``fedprox``, ``fedmedian``, ...).
    dp_mode : {"none", "sample", "central"}, optional
        ``sample``: DP-SGD on each client; ``central``: user-level DP on the
        server.
    target_epsilon : float, optional
        Each client's ε budget for the whole run.
    model : str, optional
        ``auto``, a built-in (``mlp``, ``cnn``, ``cnn1d``, ``gru``,
        ``random-conv-linear``), or your own ``MODULE:CALLABLE`` /
        ``FILE.py:CALLABLE`` where ``CALLABLE(input_shape=..., num_classes=...)``
        returns an ``nn.Module`` giving logits.
    data : path-like, optional
        One CSV, Parquet or .npz file split among the clients; without
        ``eval_data`` a stratified hold-out of it is the central test set.
    node_data : path-like, optional
        A folder or glob of one file per client (needs ``eval_data``).
    eval_data : path-like, optional
        The coordinator's held-out file.
    label_column : str, optional
        The files' label column.
    partition_by : str, optional
        With ``data``: one client per distinct value of this column.
    scenario : path-like, optional
        A scenario TOML file, or a packaged scenario's name
        (``fedge simulate --list``).
    set : mapping, optional
        Any run-config key (``pyproject.toml`` ``[tool.flwr.app.config]``),
        ``fault-*`` key or simulation key, e.g. ``{"local-epochs": 1}``.
    output_dir : path-like, optional
        Parent of the run folder (default: the run config's ``output-dir``,
        ``runs``).
    run_name : str, default ""
        Run folder name; empty = a timestamp.
    cpus_per_client : int, optional
        CPU cores reserved per virtual client (default 1).
    ray_address : str, optional
        ``HOST:PORT`` of an existing Ray cluster to run the clients on.
    verbose : bool, default False
        Show every Flower log line.
    progress : bool, default True
        Print the progress as it comes: a summary line, then one line per round
        with accuracy, ε, replies and elapsed time (in a notebook, below the
        cell). False prints nothing.

    Returns
    -------
    Run
        The completed run's folder.

    Raises
    ------
    FedgeError
        A bad option, config or data (before anything runs), or a run that did
        not complete (its message says why and where the log is).
    """
    from fedge.shared.config import default_run_config
    from fedge.simulations.simulate_options import SimulateOptions, run_simulation

    options = SimulateOptions(
        clients=clients,
        rounds=rounds,
        dataset=dataset,
        partitioning=partitioning,
        alpha=alpha,
        strategy=strategy,
        dp_mode=dp_mode,
        target_epsilon=target_epsilon,
        model=model,
        data=_text(data),
        node_data=_text(node_data),
        eval_data=_text(eval_data),
        label_column=label_column,
        partition_by=partition_by,
        scenario=_text(scenario),
        settings=list((set or {}).items()),
        cpus_per_client=cpus_per_client,
        ray_address=ray_address,
    )
    run_dir = run_simulation(
        options,
        output_dir=Path(
            default_run_config()["output-dir"] if output_dir is None else output_dir
        ),
        run_name=run_name,
        verbose=verbose,
        echo=print if progress else _quiet,
    )
    return Run(run_dir)


def export(
    run: Run | RunPath,
    *,
    quantize: str = "auto",
    tolerance: float | None = None,
    sign_key: RunPath | None = None,
    max_size_kib: float | None = None,
    max_latency_us: float | None = None,
) -> Manifest:
    """Export a finished run's model for devices, as ``fedge export`` does.

    Writes ``model.onnx`` (metadata inside), ``model.int8.onnx`` when an int8
    model keeps accuracy, the embedded artefacts, the model card and
    ``manifest.json`` into the run folder, after checking each against PyTorch.

    Parameters
    ----------
    run : Run or path-like
        A finished run folder.
    quantize : {"auto", "static-qdq", "dynamic", "none"}, default "auto"
        int8 method; ``auto`` keeps static QDQ within 1 accuracy point of fp32,
        else dynamic, else none.
    tolerance : float, optional
        Largest allowed absolute logit difference ONNX vs PyTorch (default:
        the exporter's, 1e-4).
    sign_key : path-like, optional
        Elliptic-curve private key (PEM) to sign the manifest with.
    max_size_kib, max_latency_us : float, optional
        Budgets some model file must meet, else nothing is written.

    Returns
    -------
    Manifest
        What ``manifest.json`` now holds: artefacts and hashes, parity,
        accuracy, quantisation.

    Raises
    ------
    ModelError
        Not a finished run, an export or check failure, or a budget missed.
    """
    from fedge.edge_export.embedded import DEFAULT_TOLERANCE
    from fedge.reports.model_card import export_run_with_card

    return export_run_with_card(
        Path(run),
        quantize=quantize,
        tolerance=DEFAULT_TOLERANCE if tolerance is None else tolerance,
        sign_key=None if sign_key is None else Path(sign_key),
        max_size_kib=max_size_kib,
        max_latency_us=max_latency_us,
    )


def verify(run: Run | RunPath, *, public_key: RunPath | None = None) -> VerifyReport:
    """Check an exported run folder against its manifest, as ``fedge verify`` does.

    Parameters
    ----------
    run : Run or path-like
        An exported run folder (it holds ``manifest.json``).
    public_key : path-like, optional
        The exporter's public key (PEM): the manifest's signature must then
        verify too. Without it the signature is not checked.

    Returns
    -------
    VerifyReport
        ``report.ok`` is False if any file was changed, truncated or removed;
        ``report.problems`` says which.

    Raises
    ------
    ModelError
        The manifest is missing or unreadable.
    """
    from fedge.edge_export.manifest import verify_run

    return verify_run(
        Path(run), public_key=None if public_key is None else Path(public_key)
    )


def _text(path: RunPath | None) -> str | None:
    return None if path is None else os.fspath(path)


def _quiet(line: str) -> None:
    """Drop a progress line (``progress=False``)."""
