"""Plots and a Markdown report for a run folder: what a person looks at first.

:func:`write_report` reads what the run left (``metrics.csv``; ``config.json``,
``status.json``, ``model.json``, ``faults.json`` and ``metrics.jsonl`` when they
exist) and writes ``plots/*.png`` (:mod:`fedge.reports.run_plots`) and
``report.md`` beside them. Every section adapts to the columns present, so runs
from before a feature existed (no ε columns, no per-client details) still get a
report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fedge.reports.run_plots import PARTICIPATION_COLUMNS, has_values, write_plots
from fedge.shared.atomic_io import atomic_write_text
from fedge.shared.dp_defaults import AUTO
from fedge.shared.errors import FedgeError, ModelError
from fedge.shared.json_records import read_jsonl
from fedge.shared.run_folder import (
    CENTRAL_ACCURACY,
    CENTRAL_F1,
    CENTRAL_LOSS,
    CLIENT_ACCURACY_MEAN,
    CLIENT_ACCURACY_P10,
    CLIENT_ACCURACY_SPREAD,
    CLIENT_ACCURACY_WORST,
    CLIENT_EVALUATION,
    CLIENT_SHARE_BELOW,
    CLIENTS,
    CONFIG_FILE,
    DROPPED,
    EPSILON_MAX,
    EPSILON_MEAN,
    FAILURES,
    FAULTS_FILE,
    FED_EVAL_ACCURACY,
    KEEP_ON_NODES,
    METRICS_CSV_FILE,
    METRICS_JSONL_FILE,
    MODEL_INFO_FILE,
    OUTSIDE_DP_GUARANTEE,
    PLOTS_DIR,
    REFUSED,
    REPORT_FILE,
    ROUND,
    ROUND_TIME_S,
    SAMPLED,
    TRAIN_LOSS,
    PrivacySummary,
    load_flat_run_config,
    read_status,
)

# Per-round table columns, in order, when present.
TABLE_COLUMNS = (
    ROUND,
    CENTRAL_ACCURACY,
    CENTRAL_LOSS,
    CENTRAL_F1,
    FED_EVAL_ACCURACY,
    TRAIN_LOSS,
    *PARTICIPATION_COLUMNS,
    EPSILON_MAX,
    EPSILON_MEAN,
    CLIENT_ACCURACY_MEAN,
    CLIENT_ACCURACY_WORST,
    ROUND_TIME_S,
)
_COUNT_COLUMNS = (*PARTICIPATION_COLUMNS, ROUND)


@dataclass
class RunRecord:
    """Everything the report shows, read from one run folder."""

    run_dir: Path
    metrics: pd.DataFrame
    run_config: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    faults: dict[str, Any] = field(default_factory=dict)
    details: list[dict[str, Any]] = field(default_factory=list)

    @property
    def privacy(self) -> dict[str, Any]:
        """``model.json``'s privacy summary under today's names (empty if none)."""
        privacy = self.model.get("privacy")
        if not isinstance(privacy, dict):
            return {}
        return PrivacySummary.from_dict(privacy).to_dict()


def read_run_record(run_dir: Path) -> RunRecord:
    """Read a run folder.

    Raises
    ------
    FedgeError
        If ``run_dir`` has no ``metrics.csv`` or it holds no rounds.
    """
    run_dir = Path(run_dir)
    path = run_dir / METRICS_CSV_FILE
    if not path.is_file():
        raise FedgeError(
            f"{run_dir} has no {METRICS_CSV_FILE}: not a fedge run folder, or the run "
            "stopped before its first evaluation; pass the folder `fedge simulate` printed"
        )
    try:
        metrics = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        metrics = pd.DataFrame()
    if metrics.empty or ROUND not in metrics.columns:
        raise FedgeError(
            f"{path} holds no rounds (expected a header with 'round' and one row "
            "per round); nothing to report"
        )
    return RunRecord(
        run_dir=run_dir,
        metrics=metrics.sort_values(ROUND).reset_index(drop=True),
        run_config=_read_run_config(run_dir),
        status=read_status(run_dir),
        model=_read_json(run_dir / MODEL_INFO_FILE),
        faults=_read_json(run_dir / FAULTS_FILE),
        details=read_jsonl(run_dir / METRICS_JSONL_FILE),
    )


def write_report(run_dir: Path, *, plots: list[Path] | None = None) -> Path:
    """Write ``plots/*.png`` and ``report.md`` into ``run_dir``; return the report.

    Parameters
    ----------
    run_dir : Path
    plots : list of Path or None, default None
        The plots :func:`write_report_plots` already wrote from the same
        ``metrics.csv``; None draws them.

    Raises
    ------
    FedgeError
        If ``run_dir`` has no usable ``metrics.csv``.
    """
    run = read_run_record(run_dir)
    if plots is None:
        plots = write_plots(run.metrics, run.run_dir / PLOTS_DIR)
    path = run.run_dir / REPORT_FILE
    atomic_write_text(path, render_markdown(run, plots))
    return path


def write_report_plots(run_dir: Path) -> list[Path]:
    """Write the report's ``plots/*.png`` alone; return them.

    For a run whose rounds are all recorded, ahead of :func:`write_report`.

    Raises
    ------
    FedgeError
        If ``run_dir`` has no usable ``metrics.csv``.
    """
    run = read_run_record(run_dir)
    return write_plots(run.metrics, run.run_dir / PLOTS_DIR)


# ------------------------------------------------------------------ markdown
def render_markdown(run: RunRecord, plots: list[Path]) -> str:
    """Return the text of ``report.md``."""
    parts = [f"# fedge run `{run.run_dir.name}`", ""]
    state = run.status.get("state", "unknown")
    message = run.status.get("message") or ""
    parts += [f"Status: **{state}**" + (f" ({message})" if message else ""), ""]
    parts += _config_section(run)
    parts += _faults_section(run)
    parts += _final_section(run)
    parts += _privacy_section(run)
    parts += _fairness_section(run)
    if plots:
        parts += ["## Plots", ""]
        for plot in plots:
            rel = plot.relative_to(run.run_dir).as_posix()
            parts += [f"![{plot.stem}]({rel})", ""]
    parts += ["## Per round", "", *_table(run.metrics), ""]
    parts += _clients_section(run)
    return "\n".join(parts).rstrip() + "\n"


def _config_section(run: RunRecord) -> list[str]:
    rc = run.run_config
    if not rc:
        return ["## Configuration", "", f"No {CONFIG_FILE} in the run folder.", ""]
    data = str(rc.get("dataset", "?"))
    partitioning = str(rc.get("partitioning", "?"))
    if partitioning == "dirichlet":
        partitioning += f" (α = {rc.get('dirichlet-alpha')})"
    elif partitioning == "shards":
        partitioning += f" ({rc.get('shards-per-client')} per client)"
    clients = run.model.get("provenance", {}).get("num-clients")
    if clients is None and has_values(run.metrics, SAMPLED):
        clients = int(run.metrics[SAMPLED].max())
    dp = str(rc.get("dp-mode", "none"))
    if dp != "none":
        dp += f", target ε = {rc.get('target-epsilon')}"
    rows = [
        ("dataset", data),
        ("partitioning", partitioning),
        ("clients", clients if clients is not None else "?"),
        ("strategy", rc.get("strategy", "?")),
        ("rounds", rc.get("num-server-rounds", "?")),
        ("local training", _local_training(rc)),
        ("differential privacy", dp),
    ]
    return [
        "## Configuration",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in rows),
        "",
        f"The full resolved config is in `{CONFIG_FILE}`.",
        "",
    ]


def _faults_section(run: RunRecord) -> list[str]:
    if not run.faults:
        return []
    f = run.faults
    lines = ["## Fault injection (simulation scenario)", ""]
    attack, attackers = f.get("fault-attack", "none"), f.get("fault-attackers", 0)
    if attack != "none" and attackers:
        detail = (
            f" with k = {f.get('fault-scale')}"
            if attack in ("sign-flip", "scale")
            else ""
        )
        lines.append(
            f"- {attackers} attacking clients send `{attack}` updates{detail}."
        )
    if f.get("fault-dropout", 0):
        lines.append(
            f"- Each client fails a round with probability {f['fault-dropout']}."
        )
    if f.get("fault-wipe-state"):
        lines.append(
            "- Privacy state wiped before training, as a lost disk (the node's "
            f"state folder and context.state), PARTITION@ROUND: "
            f"`{f['fault-wipe-state']}`."
        )
    lines += [f"- Fault seed: {f.get('fault-seed', 0)}.", ""]
    return lines


def _final_section(run: RunRecord) -> list[str]:
    m = run.metrics
    last = m.iloc[-1]
    lines = ["## Final figures", "", f"After round {int(last[ROUND])}:", ""]
    for column, label in (
        (CENTRAL_ACCURACY, "central accuracy"),
        (CENTRAL_LOSS, "central loss"),
        (CENTRAL_F1, "central F1 (macro)"),
        (FED_EVAL_ACCURACY, "federated accuracy"),
    ):
        if column in m.columns and not _missing(last[column]):
            lines.append(f"- {label}: **{last[column]:.4f}**")
    if has_values(m, CENTRAL_ACCURACY):
        best = m.loc[m[CENTRAL_ACCURACY].idxmax()]
        lines.append(
            f"- best central accuracy: {best[CENTRAL_ACCURACY]:.4f} "
            f"(round {int(best[ROUND])})"
        )
    for column, label in (
        (FAILURES, "failed replies"),
        (DROPPED, "dropped updates"),
        (REFUSED, "refusals"),
    ):
        if has_values(m, column):
            lines.append(f"- {label}, all rounds: {int(m[column].fillna(0).sum())}")
    if has_values(m, ROUND_TIME_S):
        lines.append(f"- time in rounds: {m[ROUND_TIME_S].sum():.1f} s")
    return [*lines, ""]


def _privacy_section(run: RunRecord) -> list[str]:
    m = run.metrics
    mode = run.run_config.get("dp-mode") or run.privacy.get("dp-mode")
    has_eps = has_values(m, EPSILON_MAX)
    if not has_eps and mode in (None, "none"):
        return [
            "## Privacy",
            "",
            "No differential privacy in this run (dp-mode = none).",
            "",
        ]
    lines = ["## Privacy", "", f"- dp-mode: {mode or 'unknown'}"]
    if has_eps:
        row = m.dropna(subset=[EPSILON_MAX]).iloc[-1]
        lines.append(
            f"- largest client ε after round {int(row[ROUND])}: **{row[EPSILON_MAX]:.3f}**"
        )
        if not _missing(row.get(EPSILON_MEAN)):
            lines.append(f"- mean client ε: {row[EPSILON_MEAN]:.3f}")
    target = run.run_config.get("target-epsilon")
    if target is not None and mode not in (None, "none"):
        lines.append(f"- budget (target ε per client): {target}")
    for key, value in sorted(run.privacy.items()):
        if (
            key != "dp-mode"
            and value is not None
            and not isinstance(value, dict | list)
        ):
            lines.append(f"- model metadata `{key}`: {value}")
    return [*lines, ""]


def _fairness_section(run: RunRecord) -> list[str]:
    """Per-client accuracy of the last evaluated round (``metrics.jsonl``)."""
    evaluated = [r for r in run.details if isinstance(r.get(CLIENT_EVALUATION), list)]
    if not evaluated:
        return []
    last = evaluated[-1]
    threshold = run.run_config.get("fairness-threshold")
    lines = [
        "## Per-client accuracy",
        "",
        f"The round {last.get(ROUND)} model on each client's own test split "
        "(every client counts once).",
        "",
    ]
    cap = run.run_config.get("fairness-max-clients")
    nodes = run.model.get("provenance", {}).get("num-clients")
    if isinstance(cap, int) and isinstance(nodes, int) and 0 < cap < nodes:
        lines[-1:-1] = [
            f"A seeded random sample of {cap} of {nodes} nodes was asked "
            f"(fairness-max-clients = {cap}): its worst client need not be the "
            "worst of all.",
            "",
        ]
    summary = {
        "mean": last.get(CLIENT_ACCURACY_MEAN),
        "worst client": last.get(CLIENT_ACCURACY_WORST),
        "10th percentile": last.get(CLIENT_ACCURACY_P10),
        "spread (max - min)": last.get(CLIENT_ACCURACY_SPREAD),
    }
    lines += [f"- {k}: {v:.4f}" for k, v in summary.items() if not _missing(v)]
    share = last.get(CLIENT_SHARE_BELOW)
    if not _missing(share):
        lines.append(f"- share of clients below accuracy {threshold}: {share:.0%}")
    if run.run_config.get("dp-mode") not in (None, "none"):
        lines.append(f"- these figures are {OUTSIDE_DP_GUARANTEE}: {KEEP_ON_NODES}")
    lines += [
        "",
        "| node | partition | examples | accuracy | loss |",
        "|---|---|---|---|---|",
    ]
    for c in last[CLIENT_EVALUATION]:
        lines.append(
            f"| {c.get('node-id')} | {c.get('partition-id', '')} | "
            f"{c.get('num-examples')} | {_four_places(c.get('accuracy'))} | "
            f"{_four_places(c.get('loss'))} |"
        )
    return [*lines, ""]


def _table(metrics: pd.DataFrame) -> list[str]:
    # A column with no value in any round (federated evaluation off, no DP) is noise.
    columns = [c for c in TABLE_COLUMNS if has_values(metrics, c)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in metrics.iterrows():
        lines.append("| " + " | ".join(_cell(c, row[c]) for c in columns) + " |")
    return lines


def _clients_section(run: RunRecord) -> list[str]:
    """Per-client outcomes over all rounds, from ``metrics.jsonl`` when it has them."""
    tally: dict[Any, dict[str, Any]] = {}
    for record in run.details:
        clients = record.get(CLIENTS)
        if not isinstance(clients, list):
            continue
        for client in clients:
            if not isinstance(client, dict) or "node-id" not in client:
                continue
            entry = tally.setdefault(client["node-id"], {"problem": ""})
            status = str(client.get("status", "replied"))
            entry[status] = entry.get(status, 0) + 1
            if client.get("problem") and not entry["problem"]:
                entry["problem"] = str(client["problem"])
    if not tally:
        return []
    statuses = sorted({s for e in tally.values() for s in e if s != "problem"})
    lines = [
        "## Clients",
        "",
        "Rounds per outcome for each node (from `metrics.jsonl`).",
        "",
        "| node | " + " | ".join(statuses) + " | first problem |",
        "|---|" + "---|" * (len(statuses) + 1),
    ]
    for node_id in sorted(tally, key=str):
        entry = tally[node_id]
        cells = [str(entry.get(s, 0)) for s in statuses]
        lines.append(f"| {node_id} | " + " | ".join(cells) + f" | {entry['problem']} |")
    return [*lines, ""]


# -------------------------------------------------------------------- helpers
def _cell(column: str, value: Any) -> str:
    if _missing(value):
        return "–"
    if column in _COUNT_COLUMNS:
        return str(int(value))
    if column == ROUND_TIME_S:
        return f"{value:.2f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _four_places(value: Any) -> str:
    """Return ``value`` to 4 decimals; a missing (non-finite) figure as 'n/a'."""
    return "n/a" if _missing(value) else f"{value:.4f}"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _local_training(rc: Mapping[str, Any]) -> str:
    """Epochs, batch and learning rate; "auto" ones are chosen per node."""
    epochs, batch = rc.get("local-epochs"), rc.get("batch-size")
    schedule = f"{epochs} epochs, batch {batch}"
    if AUTO in (epochs, batch):
        # Under sample DP the rule sizes them per node (shared/dp_defaults.py).
        schedule = f"epochs {epochs}, batch {batch} (per node: fedge privacy --suggest)"
    return f"{schedule}, lr {rc.get('learning-rate')}"


def _read_run_config(run_dir: Path) -> dict[str, Any]:
    """Return the flat run config, or ``{}``: a bad side file must not cost the report."""
    try:
        return load_flat_run_config(run_dir)
    except ModelError:
        return {}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}  # a half-written side file must not cost the whole report
    return value if isinstance(value, dict) else {}
