"""Many virtual clients on one machine, on Flower's simulation engine.

The very same ServerApp and ClientApp as a deployment run, submitted with
``flwr run`` to a private SuperLink in simulation mode that this command starts on
a free loopback port and stops at the end. Progress lines stream as rounds end;
everything lands in the run folder. ``fedge simulate`` (:mod:`fedge.cli.simulate`)
is the command line in front of :func:`simulate`.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedge.client.node_data import MIN_NODE_EXAMPLES, partition_nodes
from fedge.reports.run_report import write_report, write_report_plots
from fedge.server.run_folder import check_not_overwriting
from fedge.shared.atomic_io import atomic_write_json, atomic_write_text
from fedge.shared.config import (
    DATASET_FILE,
    RunConfig,
    default_run_config,
    from_run_config,
)
from fedge.shared.errors import ConfigError, DataError, FedgeError, RunFailedError
from fedge.shared.model_reference import (
    absolute_model_reference,
    is_model_reference,
    model_file,
)
from fedge.shared.preprocessing import Preprocessing
from fedge.shared.run_folder import (
    COMPLETE,
    FAILED,
    FAULTS_FILE,
    FLOWER_LOG_FILE,
    METRICS_CSV_FILE,
    NODE_STATE_DIR,
    PARTITIONS_FILE,
    RUNNING,
    UNKNOWN,
    read_status,
    write_status,
)
from fedge.simulations.engine import SimulationEngine, shared_engine
from fedge.simulations.fault_config import (
    FaultConfig,
    fault_config,
    split_fault_keys,
)
from fedge.simulations.flower_processes import (
    SuperLink,
    flwr_run_command,
    running_superlink,
    write_run_config,
)
from fedge.simulations.flwr_stream import stream_flwr_run
from fedge.simulations.own_data import (
    OwnData,
    OwnDataPlan,
    plan_own_data,
    run_config_keys,
    write_own_data,
)
from fedge.simulations.ray_head import engine_env
from fedge.simulations.run_end import RunEnd
from fedge.simulations.scenario_file import DEFAULT_CLIENTS

APP_DIR = Path(__file__).resolve().parent.parent


def preflight(config: RunConfig, num_clients: int) -> pd.DataFrame | None:
    """Refuse bad data or partitions before any process starts or round runs.

    Returns the partition statistics (examples and label counts per client) of a
    built-in dataset, or None for file datasets, whose nodes bring their own.
    """
    from fedge.server.reference_data import load_reference_data
    from fedge.shared.datasets import load_builtin
    from fedge.shared.partition import partition_stats

    check_client_count(config, num_clients)
    reference = load_reference_data(config.data)
    check_model(config, reference.preprocessing)
    if config.data.dataset != "file":
        train = load_builtin(config.data.dataset, "train")
        # The same split as each node's (client/node_data.py), so the same draw.
        parts = partition_nodes(train.y, num_clients, config.data)
        small = [i for i, part in enumerate(parts) if len(part) < MIN_NODE_EXAMPLES]
        if small:
            raise DataError(
                f"{config.data.partitioning} partitioning of {config.data.dataset} "
                f"({len(train)} examples) over {num_clients} clients leaves "
                f"partition(s) {small[:5]} with fewer than {MIN_NODE_EXAMPLES} "
                "examples (a node needs one to train and one to test); use fewer "
                "clients"
            )
    if config.data.dataset == "file":
        return None
    return partition_stats(train.y, parts, int(train.y.max()) + 1)


def check_model(config: RunConfig, preprocessing: Preprocessing) -> None:
    """Build the user's own model once on the data's shape, before anything starts.

    Under ``dp-mode = "sample"`` it is also checked with Opacus's
    ``ModuleValidator`` (after ``fix-model``, when set). The registry's models
    need neither check.

    Raises
    ------
    ModelError
        The module cannot be imported or raises on import, has no such
        callable, or the model is no ``nn.Module`` or gives logits of another
        shape (:func:`fedge.shared.models.user_spec`); or DP-SGD cannot train one of
        its layers (:func:`fedge.shared.private_model.check_model_for_run`).
    """
    if not is_model_reference(config.train.model):
        return
    from fedge.shared.models import user_spec
    from fedge.shared.private_model import check_model_for_run

    spec = user_spec(
        config.train.model,
        tuple(preprocessing.input_shape),
        preprocessing.num_classes,
        fix_model=config.dp.fix_model,
    )
    check_model_for_run(config, spec)


def check_starting_model(
    config: RunConfig, preprocessing: Preprocessing | None = None
) -> None:
    """Refuse a bad ``initial-weights`` file or ``trainable`` glob before anything runs.

    Builds the coordinator's round-0 model as the ServerApp will
    (:func:`fedge.server.starting_model.starting_model`).

    Parameters
    ----------
    config : RunConfig
    preprocessing : Preprocessing or None, default None
        The coordinator's fitted preprocessing when already known: with your own
        data (``--data``) its held-out file is written only once the checks pass,
        so it cannot be read back here. None: load the reference data.

    Raises
    ------
    ConfigError, ModelError
        As :func:`fedge.shared.initial_weights.prepare_start`.
    """
    if not config.train.initial_weights and config.train.trainable == "*":
        return  # random weights, every parameter trained: nothing to check
    from fedge.server.reference_data import load_reference_data
    from fedge.server.starting_model import starting_model

    if preprocessing is None:
        preprocessing = load_reference_data(config.data).preprocessing
    starting_model(config, preprocessing)


def check_client_count(config: RunConfig, num_clients: int) -> None:
    """Refuse a client count the run cannot start or finish with.

    Raises
    ------
    FedgeError
        Fewer than one client, or more ``min-nodes`` than clients.
    """
    if num_clients < 1:
        raise FedgeError(f"--clients must be >= 1, got {num_clients}")
    if config.strategy.min_nodes > num_clients:
        raise FedgeError(
            f"'min-nodes' = {config.strategy.min_nodes} exceeds --clients {num_clients}; "
            "the run would wait for nodes that never come"
        )


def simulate(
    overrides: dict[str, Any],
    *,
    num_clients: int | None = None,
    output_dir: Path,
    own_data: OwnData | None = None,
    run_name: str = "",
    cpus_per_client: int = 1,
    notes: Sequence[str] = (),
    ray_address: str = "",
    verbose: bool = False,
    echo: Any = print,
    engine: SimulationEngine | None = None,
    on_complete: Callable[[Path], None] | None = None,
) -> Path:
    """Run a simulation and return its run folder.

    Parameters
    ----------
    overrides : dict
        Run-config keys (``[tool.flwr.app.config]``) and optionally ``fault-*``
        keys (:mod:`fedge.simulations.fault_injection`); faults make the run submit a
        copy of the app whose clients misbehave as told.
    num_clients : int or None, default None
        Virtual clients (simulated SuperNodes). None: as many as ``own_data``
        defines (files, ``partition-by`` values), else 10.
    output_dir : Path
        Parent of the run folder.
    own_data : OwnData or None, default None
        Train on the user's files (:mod:`fedge.simulations.own_data`): each virtual
        client's file and the coordinator's hold-out are written to the run
        folder's ``data/`` and read as a deployment reads them.
    run_name : str, default ""
        Run folder name; empty = a timestamp.
    cpus_per_client : int, default 1
        CPU cores Flower reserves per virtual client.
    notes : sequence of str, default ()
        Where settings came from when a flag overrode the scenario file; shown
        on the summary line printed at start.
    ray_address : str, default ""
        Run the virtual clients on this existing Ray cluster (``HOST:PORT``);
        empty = the engine starts a Ray cluster of its own on this machine
        (:mod:`fedge.simulations.ray_head`).
    verbose : bool, default False
        Echo every Flower log line, not only fedge's progress and problems.
    echo : callable, default print
        Where progress lines go.
    engine : SimulationEngine or None, default None
        Submit the run to this warm engine (:mod:`fedge.simulations.engine`) instead
        of starting a SuperLink and Ray cluster for this run alone. None: the
        engine :func:`fedge.simulations.engine.sharing` set, if any (not with a
        ``ray_address``).
    on_complete : callable or None, default None
        ``on_complete(run_dir)`` as soon as the run folder says complete (the
        final model saved), before the report and while Flower still shuts
        the run down (:mod:`fedge.simulations.run_end`).

    Returns
    -------
    Path
        The run folder, with ``plots/`` and ``report.md`` written at the end.

    Raises
    ------
    FedgeError
        On a bad config or data (before anything runs), or when the run fails.
    """
    if num_clients is not None and num_clients < 1:  # before min-nodes below
        raise FedgeError(f"--clients must be >= 1, got {num_clients}")
    if engine is None and not ray_address:
        engine = shared_engine()
    own_engine = _engine_of_its_own(engine, ray_address)
    try:
        return _simulate(
            overrides,
            num_clients=num_clients,
            output_dir=output_dir,
            own_data=own_data,
            run_name=run_name,
            cpus_per_client=cpus_per_client,
            notes=notes,
            ray_address=ray_address,
            verbose=verbose,
            echo=echo,
            engine=engine or own_engine,
            own_engine=own_engine is not None,
            on_complete=on_complete,
        )
    finally:
        if own_engine is not None:
            own_engine.close()


def _engine_of_its_own(
    engine: SimulationEngine | None, ray_address: str
) -> SimulationEngine | None:
    """Return an engine for this run alone, already starting, or None.

    None when the run goes to a warm engine (given, or :func:`sharing`'s) or
    to the user's Ray cluster. The engine's SuperLink and Ray head start in the
    background while the data is read and checked and torch is imported: a
    second or more of the run's start, on a machine with a core to spare.
    """
    if engine is not None or ray_address:
        return None
    own = SimulationEngine()
    own.start_in_background()
    return own


def _simulate(
    overrides: dict[str, Any],
    *,
    num_clients: int | None,
    output_dir: Path,
    own_data: OwnData | None,
    run_name: str,
    cpus_per_client: int,
    notes: Sequence[str],
    ray_address: str,
    verbose: bool,
    echo: Any,
    engine: SimulationEngine | None,
    own_engine: bool,
    on_complete: Callable[[Path], None] | None,
) -> Path:
    run_name = run_name or time.strftime("%Y%m%d-%H%M%S")
    run_dir = output_dir.expanduser().resolve() / run_name
    overrides, fault_keys = split_fault_keys(overrides)
    overrides = {**overrides, "output-dir": str(run_dir.parent), "run-name": run_name}
    if isinstance(overrides.get("model"), str):
        overrides["model"] = absolute_model_reference(overrides["model"], Path.cwd())
    # Virtual nodes have no state-dir of their own: keep their privacy ledgers in
    # the run folder, so a resumed simulation continues every node's spend.
    overrides.setdefault("node-state-dir", str(run_dir / NODE_STATE_DIR))
    plan = _plan_data(overrides, own_data or OwnData(), num_clients)
    if plan is not None:
        num_clients = plan.num_clients
        overrides.update(run_config_keys(plan, run_dir))
    num_clients = DEFAULT_CLIENTS if num_clients is None else num_clients
    overrides.setdefault(
        "min-nodes", min(num_clients, int(default_run_config()["min-nodes"]))
    )
    for key in ("initial-weights", "sign-key"):
        if overrides.get(key):
            # The ServerApp runs in another working directory.
            path = Path(str(overrides[key])).expanduser()
            overrides[key] = str(path.absolute())
    config = from_run_config(overrides, fill_defaults=True)
    faults = fault_config(fault_keys, num_clients=num_clients)
    if plan is None:
        partitions = preflight(config, num_clients)
    else:  # the data was read and checked in full by _plan_data
        check_client_count(config, num_clients)
        check_model(config, plan.preprocessing)
        partitions = plan.partitions
    check_starting_model(config, None if plan is None else plan.preprocessing)
    # The server refuses such a folder too, but its old status.json would then be
    # read here as this run's result: refuse before anything starts.
    check_not_overwriting(run_dir, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    if plan is not None:
        write_own_data(plan, run_dir)
    if partitions is not None:
        atomic_write_text(run_dir / PARTITIONS_FILE, partitions.to_csv(index=False))
    if faults.active:
        atomic_write_json(run_dir / FAULTS_FILE, faults.to_run_config())
    # Drawn once the final model is saved, while the ServerApp ends the run.
    plots: list[Path] = []
    run_end = RunEnd(
        run_dir,
        lambda d: _write_report(d, echo, plots=plots or None),
        on_complete,
        prepare=lambda d: plots.extend(write_report_plots(d)),
    )
    try:
        with (
            tempfile.TemporaryDirectory(prefix="fedge-sim-") as tmp,
            superlink_for_run(Path(tmp), engine, ray_address, own_engine) as (
                link,
                own,
            ),
        ):
            command = flwr_run_command(
                _app_to_submit(Path(tmp), faults, config.train.model),
                write_run_config(
                    Path(tmp) / "run-config.toml",
                    {**overrides, **(faults.to_run_config() if faults.active else {})},
                ),
                federation_config={
                    "num-supernodes": num_clients,
                    "client-resources-num-cpus": cpus_per_client,
                },
            )
            echo(_summary_line(config, faults, num_clients, notes, own_data))
            with run_end:
                # A SuperLink of this run's own is stopped, with everything
                # below it, once the run folder is complete and reported on:
                # Flower's shutdown of the run (the actors, the Ray cluster)
                # takes seconds and changes nothing in the folder. A warm
                # engine's run ends as Flower ends it, so the engine stays sound.
                stream_flwr_run(
                    command,
                    link.env,
                    run_dir / FLOWER_LOG_FILE,
                    cwd=APP_DIR,
                    verbose=verbose,
                    echo=echo,
                    stop_when=run_end.finished_complete if own else None,
                )
    finally:
        _mark_if_abandoned(run_dir)
        run_end.finish()
    status = read_status(run_dir)
    if status.get("state") != COMPLETE:
        raise RunFailedError(
            f"run did not complete ({status.get('state', UNKNOWN)}: "
            f"{status.get('message') or 'see ' + str(run_dir / FLOWER_LOG_FILE)})"
        )
    return run_dir


@contextlib.contextmanager
def superlink_for_run(
    workdir: Path, engine: SimulationEngine | None, ray_address: str, own_engine: bool
) -> Iterator[tuple[SuperLink, bool]]:
    """Yield the SuperLink to submit one run to, and whether it is this run's own.

    An engine's (``own_engine``: one started for this run alone), or, on the
    user's Ray cluster, a SuperLink started for this run.
    """
    if engine is None:
        with running_superlink(
            workdir, simulation=True, env=engine_env(ray_address)
        ) as link:
            yield link, True
    else:
        with engine.run_slot() as link:
            yield link, own_engine


def _plan_data(
    overrides: dict[str, Any], own_data: OwnData, num_clients: int | None
) -> OwnDataPlan | None:
    """Read and check the user's data, or None when the run uses a built-in set.

    Raises
    ------
    ConfigError
        A built-in dataset named together with the user's data, or
        ``dataset = "file"`` with no files for the virtual nodes.
    """
    dataset = overrides.get("dataset")
    if not own_data.active:
        if dataset == DATASET_FILE and not overrides.get("node-data-dir"):
            raise ConfigError(
                f"dataset = '{DATASET_FILE}' in a simulation needs the virtual "
                "nodes' data: give --data FILE (split among the clients) or "
                "--node-data DIR (one file per client)"
            )
        return None
    if dataset not in (None, DATASET_FILE):
        raise ConfigError(
            f"--data/--node-data train on your files, but dataset = {dataset!r} "
            "names a built-in set too; drop --dataset (or the scenario's 'dataset')"
        )
    base = from_run_config(
        {k: v for k, v in overrides.items() if k != "dataset"}, fill_defaults=True
    )
    return plan_own_data(own_data, base, num_clients=num_clients)


def _mark_if_abandoned(run_dir: Path) -> None:
    """Mark a run whose coordinator died as failed, so it never reads ``running`` forever."""
    status = read_status(run_dir)
    if status.get("state") == RUNNING:
        write_status(
            run_dir,
            FAILED,
            "the coordinator stopped before the run ended (interrupted or killed); "
            "checkpoints are kept: run again with resume = true to continue",
        )


def _app_to_submit(workdir: Path, faults: FaultConfig, model: str) -> Path:
    """Return a slim copy of the app to submit: its packages and ``pyproject.toml``.

    ``flwr run`` walks every file under the folder it submits before it
    filters them, ``.venv`` and ``.git`` included: 3.4 s for a checkout with
    its environment inside, 0.1 s for the copy (written in about 20 ms). The
    copy also carries the fault components when faults are asked for, and a
    ``.py`` model file, so every worker imports the same code wherever it runs
    (:func:`fedge.simulations.fault_app.ship_model_file`).
    """
    from fedge.simulations.fault_app import ship_model_file, write_app_copy

    app = write_app_copy(
        APP_DIR, workdir / "app", faults=faults if faults.active else None
    )
    if is_model_reference(model) and model_file(model) is not None:
        ship_model_file(app, model)
    return app


def _summary_line(
    config: RunConfig,
    faults: FaultConfig,
    num_clients: int,
    notes: Sequence[str],
    own_data: OwnData | None,
) -> str:
    if own_data is not None and own_data.node_data:
        data = f"{own_data.node_data} (one file per client)"
    elif own_data is not None and own_data.data:
        split = (
            f"by {own_data.partition_by}"
            if own_data.partition_by
            else config.data.partitioning
        )
        data = f"{own_data.data} ({split})"
    else:
        data = f"{config.data.dataset} ({config.data.partitioning})"
    line = (
        f"fedge simulate: {num_clients} clients, {config.run.num_server_rounds} rounds, "
        f"{data}, {config.strategy.name}, dp-mode {config.dp.mode}"
    )
    if faults.attack != "none" and faults.attackers > 0:
        line += f", {faults.attackers} {faults.attack} attackers"
    if faults.dropout > 0:
        line += f", dropout {faults.dropout:g}"
    for partition_id, server_round in faults.wipe_state:
        line += f", partition {partition_id}'s state wiped before round {server_round}"
    if notes:
        line += f" (overriding the scenario: {'; '.join(notes)})"
    return line


def _write_report(run_dir: Path, echo: Any, *, plots: list[Path] | None = None) -> None:
    """Write plots (unless given) and report.md for whatever rounds the run recorded."""
    if not (run_dir / METRICS_CSV_FILE).is_file():
        return
    try:
        path = write_report(run_dir, plots=plots)
    except (FedgeError, OSError) as e:
        # The run's own files are intact; only the summary is missing.
        echo(
            f"fedge simulate: could not write the report ({e}); run `fedge report {run_dir}`"
        )
        return
    echo(f"fedge simulate: report {path}")
