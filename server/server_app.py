"""The fedge ServerApp: Flower glue that wires config, strategy, loop and files."""

from __future__ import annotations

import logging
import time

import pandas as pd
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from server.federation_loop import RoundOutcome, run_rounds
from server.reference_data import load_reference_data
from server.run_folder import (
    resolve_run_dir,
    save_final_model,
    start_run_folder,
    write_status,
)
from shared import keys
from shared.atomic_io import atomic_write_text
from shared.config import RunConfig, from_run_config
from shared.evaluation import evaluate_model
from shared.models import build_model, default_spec
from shared.records import load_record_into, state_dict_to_record

logger = logging.getLogger("fedge.server")
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run a federation as the run config describes and leave a complete run folder."""
    _configure_logging()
    torch.set_num_threads(1)
    config = from_run_config(context.run_config)
    reference = load_reference_data(config.data)
    spec = default_spec(
        config.train.model,
        reference.preprocessing.input_shape,
        reference.preprocessing.num_classes,
        activation=config.train.activation,
    )
    run_dir = resolve_run_dir(config)
    start_run_folder(run_dir, config)
    logger.info("fedge run folder: %s", run_dir)
    model = build_model(spec, model_seed=config.train.model_seed)

    def central_eval(server_round: int, arrays: ArrayRecord) -> dict[str, float]:
        load_record_into(model, arrays)
        return evaluate_model(model, reference.x, reference.y)

    rows: list[dict[str, float]] = []
    started = time.monotonic()
    initial = state_dict_to_record(model.state_dict())
    initial_metrics = central_eval(0, initial)
    rows.append({"round": 0, **{f"central-{k}": v for k, v in initial_metrics.items()}})
    logger.info(
        "round 0/%d  accuracy %.4f  loss %.4f  (initial model)",
        config.run.num_server_rounds,
        initial_metrics["accuracy"],
        initial_metrics["loss"],
    )

    def on_round_end(outcome: RoundOutcome) -> None:
        rows.append(_metrics_row(outcome))
        atomic_write_text(
            run_dir / "metrics.csv", pd.DataFrame(rows).to_csv(index=False)
        )
        logger.info(
            "round %d/%d  accuracy %.4f  loss %.4f  replies %d/%d  %.1fs elapsed",
            outcome.server_round,
            config.run.num_server_rounds,
            outcome.central["accuracy"],
            outcome.central["loss"],
            outcome.replies,
            outcome.sampled,
            time.monotonic() - started,
        )

    strategy = FedAvg(
        fraction_train=config.strategy.fraction_train,
        fraction_evaluate=config.strategy.fraction_evaluate,
        min_train_nodes=config.strategy.min_nodes,
        min_evaluate_nodes=config.strategy.min_nodes,
        min_available_nodes=config.strategy.min_nodes,
    )
    train_config = ConfigRecord(
        {
            keys.MODEL_SPEC: spec.to_json(),
            keys.PREPROCESSING: reference.preprocessing.to_json(),
        }
    )
    try:
        final = run_rounds(
            grid,
            strategy,
            arrays=initial,
            first_round=1,
            last_round=config.run.num_server_rounds,
            train_config=train_config,
            evaluate_config=train_config,
            reply_timeout_s=config.run.round_timeout_s,
            central_eval=central_eval,
            on_round_end=on_round_end,
            federated_evaluation=config.strategy.fraction_evaluate > 0,
        )
    except BaseException as e:
        write_status(run_dir, "failed", f"{type(e).__name__}: {e}")
        raise
    load_record_into(model, final)
    final_metrics = rows[-1]
    save_final_model(
        run_dir,
        state_dict=model.state_dict(),
        spec=spec,
        preprocessing=reference.preprocessing,
        provenance=_provenance(config, rows, reference.fingerprint(), grid),
        privacy={"dp-mode": config.dp.mode},
        metrics={
            k.removeprefix("central-"): v
            for k, v in final_metrics.items()
            if k.startswith("central-")
        },
    )
    write_status(run_dir, "complete", final_accuracy=final_metrics["central-accuracy"])
    logger.info(
        "fedge run complete: accuracy %.4f, folder %s",
        final_metrics["central-accuracy"],
        run_dir,
    )


def _metrics_row(outcome: RoundOutcome) -> dict[str, float]:
    row: dict[str, float] = {"round": outcome.server_round}
    row.update({f"central-{k}": v for k, v in outcome.central.items()})
    row["train-loss"] = outcome.train_metrics.get(keys.TRAIN_LOSS, float("nan"))
    if outcome.evaluate_metrics:
        row["fed-eval-loss"] = outcome.evaluate_metrics.get(
            keys.EVAL_LOSS, float("nan")
        )
        row["fed-eval-accuracy"] = outcome.evaluate_metrics.get(
            keys.EVAL_ACCURACY, float("nan")
        )
    row.update(
        {
            "sampled": outcome.sampled,
            "replies": outcome.replies,
            "failures": outcome.failures,
            "round-time-s": round(outcome.round_time_s, 3),
            "bytes-sent": outcome.bytes_sent,
            "bytes-received": outcome.bytes_received,
        }
    )
    return row


def _provenance(
    config: RunConfig, rows: list[dict[str, float]], fingerprint: str, grid: Grid
) -> dict:
    return {
        "rounds": config.run.num_server_rounds,
        "strategy": config.strategy.name,
        "num-clients": len(list(grid.get_node_ids())),
        "dataset": config.data.dataset
        if config.data.dataset != "file"
        else config.data.eval_data_path,
        "dataset-fingerprint": fingerprint,
    }


def _configure_logging() -> None:
    """Show fedge's progress lines where Flower shows its own logs."""
    for name in ("fedge", "server", "shared"):
        package_logger = logging.getLogger(name)
        if not package_logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(levelname)s fedge: %(message)s"))
            package_logger.addHandler(handler)
            package_logger.setLevel(logging.INFO)
            package_logger.propagate = False
