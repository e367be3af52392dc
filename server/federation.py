"""One federated run from start (or resume) to the finished run folder.

This wires the pieces: reference data and model, Flower's strategy inside the
:class:`~fedge.server.robust_strategy.RobustStrategy` wrapper, the reply checks
(:class:`~fedge.server.reply_check.ReplyCheck`), the round loop, the metrics
history, checkpoints, the final model and the edge-export hand-off. The ServerApp
only calls :func:`run_federation`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from torch import nn

from fedge.server.checkpoint import load_latest_checkpoint, restore_strategy_state
from fedge.server.client_evaluation import evaluate_every_node, evaluation_due
from fedge.server.federation_loop import RoundOutcome, StopRun, run_rounds
from fedge.server.frozen_arrays import ArraysWire
from fedge.server.metrics_history import MetricsHistory
from fedge.server.node_sampling import wait_for_nodes
from fedge.server.reference_data import load_reference_data
from fedge.server.reply_check import ReplyCheck
from fedge.server.robust_strategy import RobustStrategy
from fedge.server.round_end import RoundEnd
from fedge.server.round_summary import initial_row, privacy_summary
from fedge.server.run_end_imports import RunEndImports
from fedge.server.run_folder import (
    check_resumable,
    resolve_run_dir,
    run_identity,
    save_final_model,
    start_run_folder,
)
from fedge.server.run_outcome import NothingTrainedError, refuse_untrained
from fedge.server.starting_model import starting_model
from fedge.server.strategy_factory import build_strategy
from fedge.shared import keys
from fedge.shared.augmentation import check_augmentable
from fedge.shared.config import RunConfig
from fedge.shared.datasets import Dataset
from fedge.shared.errors import ConfigError, FedgeError
from fedge.shared.evaluation import evaluate_model
from fedge.shared.initial_weights import StartingPoint
from fedge.shared.models import ModelSpec, build_model
from fedge.shared.private_model import check_model_for_run
from fedge.shared.records import load_record_into, state_dict_to_record
from fedge.shared.run_folder import (
    CENTRAL_ACCURACY,
    CENTRAL_LOSS,
    CENTRAL_PREFIX,
    CHECKPOINT_DIR,
    COMPLETE,
    FAILED,
    KEEP_ON_NODES,
    MANIFEST_FILE,
    OUTSIDE_DP_GUARANTEE,
    PER_CLIENT_FIGURES,
    ROUND,
    RUN_COMPLETE_LOG,
    write_status,
)

logger = logging.getLogger("fedge.server")


def run_federation(grid: Grid, config: RunConfig) -> Path:
    """Run (or resume) the federation ``config`` describes; return the run folder.

    Raises
    ------
    FedgeError
        On bad config or data before round 1, or when the run has to end (too few
        nodes after ``node-wait-timeout-s``); ``status.json`` then says why and
        every checkpoint written so far is kept.
    NothingTrainedError
        When no round aggregated an update: no model is saved or exported
        (:mod:`fedge.server.run_outcome`).
    """
    check_sign_key(config)
    reference = load_reference_data(config.data)
    # Before the run folder is touched: a bad weights file or glob writes nothing.
    spec, model, start = starting_model(config, reference.preprocessing)
    check_model_for_run(config, spec)  # before the run folder or any round
    check_augmentable(
        reference.preprocessing.input_shape,
        multiplicity=config.dp.augment_multiplicity,
        dp_mode=config.dp.mode,
    )
    run_dir = resolve_run_dir(config)
    checkpoint = None
    if config.run.resume:
        check_resumable(run_dir, config)
        checkpoint = load_latest_checkpoint(run_dir)
    start_run_folder(run_dir, config, resuming=checkpoint is not None)
    logger.info("fedge run folder: %s", run_dir)
    if config.dp.mode != "none" and config.report.fairness_report:
        logger.warning(
            "%s are %s; %s", PER_CLIENT_FIGURES, OUTSIDE_DP_GUARANTEE, KEEP_ON_NODES
        )
    # Imported while the rounds run, so the end pays only its own work.
    run_end_imports = RunEndImports.for_run(config)
    try:
        final_arrays, stop_reason = _train(
            grid,
            config,
            run_dir,
            spec,
            model,
            start,
            reference,
            checkpoint,
            after_round=run_end_imports.start,  # acts on its first call
        )
        return _finish(
            run_dir,
            config,
            spec,
            reference,
            final_arrays,
            stop_reason,
            grid,
            start=start,
            run_end_imports=run_end_imports,
        )
    except NothingTrainedError:
        raise  # its status.json is written, with the reason and more
    except BaseException as e:
        write_status(run_dir, FAILED, f"{type(e).__name__}: {e}")
        raise


def _train(
    grid: Grid,
    config: RunConfig,
    run_dir: Path,
    spec: ModelSpec,
    model: nn.Module,
    start: StartingPoint,
    reference: Dataset,
    checkpoint: Any,
    *,
    after_round: Callable[[], None] = lambda: None,
) -> tuple[ArrayRecord, str]:
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    node_ids = wait_for_nodes(
        grid,
        min_nodes=config.strategy.min_nodes,
        timeout_s=config.run.node_wait_timeout_s,
        checkpoint_dir=checkpoint_dir,
    )
    strategy = RobustStrategy.from_config(
        build_strategy(config, num_nodes_hint=len(node_ids)),
        config,
        checkpoint_dir=checkpoint_dir,
    )
    checks = ReplyCheck.from_config(config, strategy.base)
    history = MetricsHistory(run_dir)
    num_rounds = config.run.num_server_rounds

    def central_eval(server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        load_record_into(model, arrays)
        return evaluate_model(model, reference.x, reference.y)

    if checkpoint is not None:
        restore_strategy_state(strategy, checkpoint.strategy_state)
        checks.load_state_dict(checkpoint.reply_checks)
        history.resume(checkpoint.server_round, checkpoint.metrics_history)
        arrays, first_round = checkpoint.array_record(), checkpoint.server_round + 1
        logger.info(
            "resuming after round %d of %d from %s",
            checkpoint.server_round,
            num_rounds,
            checkpoint.path,
        )
    else:
        arrays, first_round = state_dict_to_record(model.state_dict()), 1
        history.truncate_after(-1)
        history.append(initial_row(central_eval(0, arrays)))
        logger.info(
            "round 0/%d  accuracy %.4f  loss %.4f  (initial model)",
            num_rounds,
            history.rows()[-1][CENTRAL_ACCURACY],
            history.rows()[-1][CENTRAL_LOSS],
        )
    # Frozen parameters never enter aggregation and reach each node once.
    wire = ArraysWire.for_model(arrays, start.selection.frozen)
    round_end = RoundEnd(
        run_dir, config, strategy=strategy, checks=checks, history=history, grid=grid
    )

    def on_round_end(outcome: RoundOutcome) -> None:
        round_end(outcome)
        after_round()

    train_config = ConfigRecord(
        {
            keys.MODEL_SPEC: spec.to_json(),
            keys.PREPROCESSING: reference.preprocessing.to_json(),
            keys.FEDGE_RUN_ID: run_identity(run_dir),
        }
    )
    evaluate_config = ConfigRecord(dict(train_config))

    def client_eval(
        server_round: int,
        arrays: ArrayRecord,
        unanswered: frozenset[int],
        ends_run: bool,
    ) -> list[dict[str, Any]] | None:
        if not evaluation_due(server_round, ends_run=ends_run, report=config.report):
            return None
        return evaluate_every_node(
            grid,
            arrays,
            evaluate_config,
            server_round=server_round,
            timeout_s=config.run.round_timeout_s,
            skip=unanswered,
            max_nodes=config.report.fairness_max_clients,
            sampler_seed=config.run.sampler_seed,
            wire=wire,
        )

    stop_reason = ""
    if first_round <= num_rounds:
        try:
            arrays = run_rounds(
                grid,
                strategy,
                arrays=arrays,
                first_round=first_round,
                last_round=num_rounds,
                train_config=train_config,
                evaluate_config=evaluate_config,
                reply_timeout_s=config.run.round_timeout_s,
                central_eval=central_eval,
                on_round_end=on_round_end,
                federated_evaluation=config.strategy.fraction_evaluate > 0,
                checks=checks,
                client_eval=client_eval,
                stop_check=round_end.stop_reason,
                wire=wire,
            )
        except StopRun as stop:
            stop_reason = str(stop)
            arrays = stop.arrays
            logger.warning("run stopped early: %s", stop_reason)
    return arrays, stop_reason


def _finish(
    run_dir: Path,
    config: RunConfig,
    spec: ModelSpec,
    reference: Dataset,
    arrays: ArrayRecord,
    stop_reason: str,
    grid: Grid,
    *,
    start: StartingPoint | None = None,
    run_end_imports: RunEndImports | None = None,
) -> Path:
    history = MetricsHistory(run_dir)
    # Before anything is saved: an untrained model is no run's result.
    refuse_untrained(run_dir, history.records())
    model = build_model(spec)
    load_record_into(model, arrays)
    rows = history.rows()
    final = rows[-1]
    metrics = {
        k.removeprefix(CENTRAL_PREFIX): v
        for k, v in final.items()
        if k.startswith(CENTRAL_PREFIX)
    }
    save_final_model(
        run_dir,
        state_dict=model.state_dict(),
        spec=spec,
        preprocessing=reference.preprocessing,
        provenance={
            "rounds": int(final[ROUND]),
            "planned-rounds": config.run.num_server_rounds,
            "strategy": config.strategy.name,
            "num-clients": len(list(grid.get_node_ids())),
            "dataset": config.data.dataset
            if config.data.dataset != "file"
            else Path(config.data.eval_data_path).name,
            "dataset-fingerprint": reference.fingerprint(),
            # initial-weights and its SHA-256, trainable and frozen names
            **(start.provenance() if start is not None else {}),
        },
        privacy=privacy_summary(config, history.records()),
        metrics=metrics,
    )
    if run_end_imports is not None:
        run_end_imports.wait()  # never two threads importing at once
    if config.run.export_onnx:
        # writes the model card too, listed in the manifest
        _export(run_dir, sign_key=config.run.sign_key or None)
    else:
        _write_card(run_dir)
    # Logged before the status: a simulation ends the run's processes soon
    # after the folder says complete (simulations/simulate.py), so nothing
    # the ServerApp does may come after it.
    logger.info(
        "%s: accuracy %.4f after round %d, folder %s",
        RUN_COMPLETE_LOG,
        metrics["accuracy"],
        int(final[ROUND]),
        run_dir,
    )
    write_status(
        run_dir,
        COMPLETE,
        stop_reason or f"all {config.run.num_server_rounds} rounds done",
        final_accuracy=metrics["accuracy"],
        final_round=int(final[ROUND]),
    )
    return run_dir


def check_sign_key(config: RunConfig) -> None:
    """Refuse, before round 1, a ``sign-key`` the coordinator cannot read.

    Raises
    ------
    ConfigError
        ``sign-key`` names no file.
    """
    key = config.run.sign_key
    if key and not Path(key).expanduser().is_file():
        raise ConfigError(
            f"sign-key {key} not found on the coordinator; give the path of its "
            'private key (fedge keygen KEY), or sign-key = "" to export unsigned'
        )


def _export(run_dir: Path, *, sign_key: str | None) -> None:
    """Export the finished model with its model card; a failed export fails loudly.

    With ``sign_key`` the manifest (hashing every artefact) is signed too.
    """
    from fedge.reports.model_card import export_run_with_card

    manifest = export_run_with_card(
        run_dir, sign_key=Path(sign_key).expanduser() if sign_key else None
    )
    logger.info(
        "edge export written: %s", getattr(manifest, "path", run_dir / MANIFEST_FILE)
    )


def _write_card(run_dir: Path) -> None:
    """Write the model card of a run without an edge export.

    The model is saved by then: a card that cannot be written (its held-out
    data gone, say) is logged, and the run still completes.
    """
    from fedge.reports.model_card import write_run_card

    try:
        paths = write_run_card(run_dir)
    except FedgeError as e:
        logger.error(
            "model card not written: %s; write it later with `fedge export %s`",
            e,
            run_dir,
        )
        return
    logger.info("model card written: %s", paths[-1])
