"""The run folder's contract: what a run leaves on disk, named and read in one place.

Every producer (the ServerApp, the edge exporter, ``fedge simulate``) and every
consumer (reports, ``fedge export``, the demo, benchmarks) takes the folder's
file names, the model format tag, the metric column names, ``status.json``,
``model.json`` and ``config.json`` from here, so the folder's shape is stated
once.

Two ε figures exist, each under one name everywhere:

- :data:`fedge.shared.keys.EPSILON` (``"epsilon"``): one node's cumulative ε over the
  run, as its replies carry it;
- :data:`EPSILON_MAX`: the largest of those over the nodes (for central DP, the
  run's user-level ε), in ``metrics.csv``, ``model.json`` and the ONNX metadata.

Folders written before the names were unified are still read:
:data:`LEGACY_EPSILON_MAX` in an old ``model.json``'s privacy summary, and the
nested ``"config"`` section of an old ``config.json``.

Nothing here imports torch: ``fedge predict`` reads file names from this module
and must stay torch-free, so :class:`ModelInfo` imports the model spec's module
only when it parses one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedge.shared import keys
from fedge.shared.atomic_io import atomic_write_json
from fedge.shared.config import RunConfig, from_run_config
from fedge.shared.config_keys import CONFIG_KEYS, flat_from_nested
from fedge.shared.errors import ModelError
from fedge.shared.versions import package_versions

if TYPE_CHECKING:
    from fedge.shared.models import ModelSpec
    from fedge.shared.preprocessing import Preprocessing

# ------------------------------------------------------------------ file names
CONFIG_FILE = "config.json"
STATUS_FILE = "status.json"
RUN_ID_FILE = "run-id"
METRICS_CSV_FILE = "metrics.csv"
METRICS_JSONL_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
MODEL_WEIGHTS_FILE = "model.pt"
MODEL_INFO_FILE = "model.json"
ONNX_FP32_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
# Embedded artefacts (edge_export/embedded.py): ONNX Runtime's ORT format with
# the operator list for a minimal build, a batch-1 static-shape graph, and the
# graph with ONNX Runtime's optimisations applied offline.
ORT_FILE = "model.ort"
ORT_OPERATORS_FILE = "required_operators.config"
ONNX_FIXED_FILE = "model.fixed.onnx"
ONNX_OPTIMIZED_FILE = "model.optimized.onnx"
MANIFEST_FILE = "manifest.json"
PRIVACY_RECORD_FILE = "privacy-record.json"  # the coordinator's per-node DP record
SIGNATURE_FILE = "manifest.sig"  # the manifest's signature (Sigstore bundle)
FAULTS_FILE = "faults.json"
PARTITIONS_FILE = "partitions.csv"
FLOWER_LOG_FILE = "flower.log"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
NODE_STATE_DIR = "node-state"
# The model card (``model.json`` above is the model's spec and provenance) and
# the figures it shows, written at the end of a run and by ``fedge export``
MODEL_CARD_MARKDOWN_FILE = "model_card.md"
MODEL_CARD_JSON_FILE = "model_card.json"
CARD_DIR = "card"  # the card's figures and explanation tables
CONFUSION_MATRIX_FILE = "confusion-matrix.png"
FEATURE_IMPORTANCE_CSV = "feature-importance.csv"
FEATURE_IMPORTANCE_PNG = "feature-importance.png"
SALIENCY_PNG = "saliency-class-{class_index}.png"

MODEL_FORMAT = "fedge-model/1"


@dataclass(frozen=True)
class ExportedFile:
    """A file ``manifest.json`` lists, and what the export does with it.

    Attributes
    ----------
    name : str
        File name in the run folder.
    role : str
        Its role in the manifest.
    device_model : bool
        A model a device may run: its batch-1 latency and size are measured.
    embedded : bool
        Written by the embedded step (``edge_export/embedded.py``).
    same_function_as_onnx : bool
        Must compute ``model.onnx``'s logits within the export's tolerance
        (``fedge verify`` runs it); int8 rounds on purpose, so it does not.
    batch : int or None
        Examples the model takes per call; None for any number.
    engine : str or None
        Its name in the edge benchmark, for the artefacts beyond fp32 and int8.
    written_by_run : bool
        Written by the run, not the export; listed so the manifest covers it.
    """

    name: str
    role: str
    device_model: bool = False
    embedded: bool = False
    same_function_as_onnx: bool = False
    batch: int | None = None
    engine: str | None = None
    written_by_run: bool = False


def _embedded_model(
    name: str, role: str, *, engine: str, batch: int | None = None
) -> ExportedFile:
    """Describe a model the embedded step builds from ``model.onnx``.

    It must compute ``model.onnx``'s function, a device may run it, and the
    benchmark times it under ``engine``.
    """
    return ExportedFile(
        name,
        role,
        device_model=True,
        embedded=True,
        same_function_as_onnx=True,
        batch=batch,
        engine=engine,
    )


# Every file an export lists in its manifest, in the order it is written and
# measured; each view of it (roles, model files, embedded files, benchmark
# engines) is taken from here.
EXPORTED_FILES = (
    ExportedFile(ONNX_FP32_FILE, "onnx-fp32", device_model=True),
    ExportedFile(ONNX_INT8_FILE, "onnx-int8", device_model=True),
    _embedded_model(ORT_FILE, "ort-format", engine="ort-format"),
    ExportedFile(ORT_OPERATORS_FILE, "ort-required-operators", embedded=True),
    _embedded_model(
        ONNX_FIXED_FILE, "onnx-fp32-batch1-static", engine="onnx-fixed-batch1", batch=1
    ),
    _embedded_model(
        ONNX_OPTIMIZED_FILE, "onnx-fp32-optimized", engine="onnx-optimized"
    ),
    ExportedFile(MODEL_WEIGHTS_FILE, "torch-state-dict", written_by_run=True),
    ExportedFile(MODEL_INFO_FILE, "model-spec-and-provenance", written_by_run=True),
    ExportedFile(CONFIG_FILE, "run-config", written_by_run=True),
    ExportedFile(MODEL_CARD_JSON_FILE, "model-card"),
    ExportedFile(MODEL_CARD_MARKDOWN_FILE, "model-card-text"),
)

# ------------------------------------------------------------------ manifest.json
# In its "embedded" section: each model file's batch-1 latency (p50/p95 µs) and
# size, and how that latency was measured (on the exporting machine); the model
# card shows both.
BATCH1_LATENCY = "batch1-one-thread"
BATCH1_TIMING = "batch1-timing"

# ------------------------------------------------------ model.json provenance
# What a run started from (shared.initial_weights.StartingPoint.provenance).
PROVENANCE_INITIAL_WEIGHTS = "initial-weights"  # the state_dict file's path
PROVENANCE_INITIAL_WEIGHTS_SHA256 = "initial-weights-sha256"
PROVENANCE_TRAINABLE = "trainable"  # parameter names; only when some are frozen
PROVENANCE_FROZEN = "frozen"

# ------------------------------------------------------------------ status.json
RUNNING = "running"
COMPLETE = "complete"
FAILED = "failed"
UNKNOWN = "unknown"
# The ServerApp's last log line, logged just before status.json says complete.
RUN_COMPLETE_LOG = "fedge run complete"
# False in a failed run's status when resuming cannot help (e.g. no round
# trained the model and none is left to run); missing means it may.
RESUMABLE = "resumable"

# ------------------------------------------------- metrics.csv / metrics.jsonl
ROUND = "round"
CENTRAL_PREFIX = "central-"  # + each key of shared.evaluation.evaluate_model
CENTRAL_LOSS = "central-loss"
CENTRAL_ACCURACY = "central-accuracy"
CENTRAL_F1 = "central-f1"
CENTRAL_ROC_AUC = "central-roc-auc"
CENTRAL_PRECISION = "central-precision"
CENTRAL_RECALL = "central-recall"
# The clients' mean of their ``train-loss`` replies, under the reply's own name.
TRAIN_LOSS = keys.TRAIN_LOSS
FED_EVAL_LOSS = "fed-eval-loss"
FED_EVAL_ACCURACY = "fed-eval-accuracy"
SAMPLED = "sampled"
REPLIES = "replies"
FAILURES = "failures"
DROPPED = "dropped"
# How many sampled nodes replied ``refused`` (budget spent) this round.
REFUSED = keys.REFUSED
AGGREGATED = "aggregated"
EPSILON_MAX = "epsilon-max"
EPSILON_MEAN = "epsilon-mean"
# Per client row (metrics.jsonl): the coordinator's own ε of the node, from its
# record, and the ε the node reported; "epsilon" is the larger of the two.
EPSILON_COORDINATOR = "epsilon-coordinator"
EPSILON_REPORTED = "epsilon-reported"
CENTRAL_DP_DELTA = "central-dp-delta"
ROUND_TIME_S = "round-time-s"
BYTES_SENT = "bytes-sent"
BYTES_RECEIVED = "bytes-received"
# metrics.jsonl only: per-client figures and the nodes sampled
CLIENTS = "clients"
SAMPLED_NODES = "sampled-nodes"
# metrics.jsonl only: each distinct error the round's error replies said (one
# line, server.reply_errors.describe_error) -> how many nodes replied it
REPLY_ERRORS = "reply-errors"
# Per-client evaluation of the global model on every node's local test split
# (rounds due by ``evaluate-interval``, and the last): one entry per node in
# metrics.jsonl, and its summary over the nodes in metrics.csv
CLIENT_EVALUATION = "client-evaluation"
CLIENTS_EVALUATED = "clients-evaluated"
CLIENT_ACCURACY_MEAN = "client-accuracy-mean"
CLIENT_ACCURACY_WORST = "client-accuracy-worst"
CLIENT_ACCURACY_P10 = "client-accuracy-p10"
CLIENT_ACCURACY_SPREAD = "client-accuracy-spread"
CLIENT_SHARE_BELOW = "client-share-below-threshold"
FAIRNESS_COLUMNS = (
    CLIENTS_EVALUATED,
    CLIENT_ACCURACY_MEAN,
    CLIENT_ACCURACY_WORST,
    CLIENT_ACCURACY_P10,
    CLIENT_ACCURACY_SPREAD,
    CLIENT_SHARE_BELOW,
)
# What per-client evaluation releases outside a run's DP guarantee, and how to
# keep it on the nodes: said once for the coordinator's warning, report.md and
# the model card.
PER_CLIENT_FIGURES = (
    "per-client evaluation figures (accuracy, loss, label counts of each "
    "node's test split)"
)
OUTSIDE_DP_GUARANTEE = "released outside the DP guarantee"
KEEP_ON_NODES = "set fairness-report = false where they must not leave the nodes"
# Seconds of the round spent on that per-client evaluation (part of round-time-s).
CLIENT_EVALUATION_S = "client-evaluation-s"

# The declared columns of metrics.csv, in order; others follow as they appear.
METRIC_COLUMNS = (
    ROUND,
    CENTRAL_LOSS,
    CENTRAL_ACCURACY,
    CENTRAL_F1,
    CENTRAL_ROC_AUC,
    CENTRAL_PRECISION,
    CENTRAL_RECALL,
    TRAIN_LOSS,
    FED_EVAL_LOSS,
    FED_EVAL_ACCURACY,
    SAMPLED,
    REPLIES,
    FAILURES,
    DROPPED,
    REFUSED,
    EPSILON_MAX,
    EPSILON_MEAN,
    ROUND_TIME_S,
    BYTES_SENT,
    BYTES_RECEIVED,
    *FAIRNESS_COLUMNS,
    CLIENT_EVALUATION_S,
)

# The name model.json and the ONNX metadata used for EPSILON_MAX before it was
# unified; still read, never written.
LEGACY_EPSILON_MAX = "max-epsilon"


# ------------------------------------------------------------------ status.json
def write_status(run_dir: Path, state: str, message: str = "", **extra: Any) -> None:
    """Record the run's state (:data:`RUNNING`, :data:`COMPLETE`, :data:`FAILED`).

    Parameters
    ----------
    run_dir : Path
        The run folder.
    state : str
        The new state.
    message : str, default ""
        Why, in a sentence a person reads.
    **extra
        Further fields, e.g. ``final_accuracy`` and ``final_round``.
    """
    atomic_write_json(
        run_dir / STATUS_FILE,
        {
            "state": state,
            "message": message,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        },
    )


def read_status(run_dir: Path) -> dict[str, Any]:
    """Return the last status written, or ``{"state": "unknown"}`` if there is none."""
    path = Path(run_dir) / STATUS_FILE
    if not path.is_file():
        return {"state": UNKNOWN}
    return dict(json.loads(path.read_text(encoding="utf-8")))


# ------------------------------------------------------------------ config.json
def save_run_config(run_dir: Path, config: RunConfig) -> None:
    """Write ``config.json``: the flat kebab-case run config and package versions.

    This is the one shape: the keys of ``[tool.flwr.app.config]``, which
    :func:`load_run_config` turns back into the same :class:`RunConfig`.
    """
    atomic_write_json(
        run_dir / CONFIG_FILE,
        {"run-config": config.to_flat(), "versions": package_versions()},
    )


def load_flat_run_config(run_dir: Path) -> dict[str, Any]:
    """Return the flat run config a folder's ``config.json`` holds (``{}`` without one).

    Reads both the current shape (``"run-config"``) and the nested ``"config"``
    section of folders written before it (``RunConfig`` sections by field name).

    Raises
    ------
    ModelError
        ``config.json`` is not JSON, or holds neither shape.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    saved = _read_json_object(path)
    if isinstance(saved.get("run-config"), dict):
        return dict(saved["run-config"])
    if isinstance(saved.get("config"), dict):
        return flat_from_nested(saved["config"])
    raise ModelError(
        f"{path} holds no run config (expected a 'run-config' table); "
        "was it written by fedge?"
    )


def load_run_config(run_dir: Path) -> RunConfig:
    """Return the typed run config of a run folder.

    Keys a folder lacks (added to fedge after the run) take today's defaults;
    keys fedge no longer knows are ignored, so old folders stay readable.

    Raises
    ------
    ModelError
        No ``config.json``, or one that is unreadable or holds no run config.
    ConfigError
        A saved value fails today's validation.
    """
    flat = load_flat_run_config(run_dir)
    if not flat:
        raise ModelError(
            f"{Path(run_dir) / CONFIG_FILE} not found; is {run_dir} a fedge run folder?"
        )
    known = {k: v for k, v in flat.items() if k in CONFIG_KEYS}
    return from_run_config(known, fill_defaults=True)


# ------------------------------------------------------------------ model.json
@dataclass(frozen=True)
class PrivacySummary:
    """The privacy figures that travel with a model (``model.json``, ONNX metadata).

    Attributes
    ----------
    dp_mode : str
        ``none``, ``sample`` or ``central``.
    epsilon_max : float or None
        The largest cumulative ε any node reached (sample-level DP), or the
        run's user-level ε (central DP); None without DP.
    delta, noise_multiplier, max_grad_norm : float or None
        The guarantee's δ, the noise multiplier and the per-sample clipping norm.
    extra : dict
        Mode-specific figures (``accountant``; ``clipping-norm`` and ``level``).
    """

    dp_mode: str
    epsilon_max: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object written to ``model.json`` and the ONNX metadata."""
        return {
            "dp-mode": self.dp_mode,
            EPSILON_MAX: self.epsilon_max,
            "delta": self.delta,
            "noise-multiplier": self.noise_multiplier,
            "max-grad-norm": self.max_grad_norm,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PrivacySummary:
        """Read :meth:`to_dict` output, or an old one naming ε ``max-epsilon``."""
        rest = dict(d)
        epsilon = rest.pop(EPSILON_MAX, None)
        legacy = rest.pop(LEGACY_EPSILON_MAX, None)
        return cls(
            dp_mode=str(rest.pop("dp-mode", "none")),
            epsilon_max=epsilon if epsilon is not None else legacy,
            delta=rest.pop("delta", None),
            noise_multiplier=rest.pop("noise-multiplier", None),
            max_grad_norm=rest.pop("max-grad-norm", None),
            extra=rest,
        )


@dataclass(frozen=True)
class ModelInfo:
    """``model.json``: what rebuilds the final model and what it guarantees.

    Attributes
    ----------
    spec : ModelSpec
        The architecture (rebuilds the module for ``model.pt``).
    preprocessing : Preprocessing
        How raw inputs are encoded for the model.
    provenance : dict
        Rounds, strategy, number of clients, dataset and its fingerprint, and
        the versions of the packages it was trained with.
    privacy : PrivacySummary
        The DP guarantee.
    metrics : dict
        The final central metrics (``accuracy``, ``loss``, ...).
    """

    spec: ModelSpec
    preprocessing: Preprocessing
    provenance: dict[str, Any]
    privacy: PrivacySummary
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object of ``model.json``, format tag first."""
        return {
            "format": MODEL_FORMAT,
            "spec": self.spec.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "provenance": self.provenance,
            "privacy": self.privacy.to_dict(),
            "metrics": self.metrics,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "") -> ModelInfo:
        """Parse ``model.json``.

        Raises
        ------
        ModelError
            Another format tag, or a missing spec or preprocessing.
        """
        from fedge.shared.models import ModelSpec  # torch: only when one is parsed
        from fedge.shared.preprocessing import Preprocessing

        source = source or MODEL_INFO_FILE
        if d.get("format") != MODEL_FORMAT:
            raise ModelError(
                f"{source}: format {d.get('format')!r}, expected {MODEL_FORMAT!r}"
            )
        missing = [k for k in ("spec", "preprocessing") if k not in d]
        if missing:
            raise ModelError(f"{source} has no {missing}; was it written by fedge?")
        return cls(
            spec=ModelSpec.from_dict(d["spec"]),
            preprocessing=Preprocessing.from_dict(d["preprocessing"]),
            provenance=dict(d.get("provenance") or {}),
            privacy=PrivacySummary.from_dict(d.get("privacy") or {}),
            metrics=dict(d.get("metrics") or {}),
        )


def write_model_info(run_dir: Path, info: ModelInfo) -> None:
    """Write ``model.json`` atomically, adding the package versions to provenance."""
    payload = info.to_dict()
    payload["provenance"] = {**info.provenance, "versions": package_versions()}
    atomic_write_json(Path(run_dir) / MODEL_INFO_FILE, payload)


def read_model_info(run_dir: Path) -> ModelInfo:
    """Read a run folder's ``model.json``.

    Raises
    ------
    ModelError
        Missing, not JSON, or not a fedge ``model.json``.
    """
    path = Path(run_dir) / MODEL_INFO_FILE
    if not path.is_file():
        raise ModelError(
            f"{path} not found; is {path.parent} a finished fedge run folder "
            f"(it needs {MODEL_INFO_FILE}, {MODEL_WEIGHTS_FILE} and {CONFIG_FILE})?"
        )
    return ModelInfo.from_dict(_read_json_object(path), source=str(path))


def _read_json_object(path: Path) -> dict[str, Any]:
    """Read a JSON file that must hold an object.

    Raises
    ------
    ModelError
        Not JSON, or not an object.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data
