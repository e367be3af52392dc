"""The typed run configuration, built once from Flower's run config.

Defaults live in ``pyproject.toml`` under ``[tool.flwr.app.config]`` and nowhere
else; this module only types and validates them. Every problem found is reported
together in one :class:`~fedge.shared.errors.ConfigError`, as Opacus's
``ModuleValidator.validate`` collects a list before raising.
"""

from __future__ import annotations

import difflib
import functools
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fedge.shared.config_keys import CONFIG_KEYS, SECTION_KEYS
from fedge.shared.dp_defaults import AUTO, auto_activation, auto_learning_rate
from fedge.shared.errors import ConfigError
from fedge.shared.privacy import ACCOUNTANTS

DATASET_FILE = "file"  # dataset value meaning: the data comes from files
PARTITIONINGS = ("iid", "dirichlet", "shards")
IMPUTE_MODES = ("none", "mean")
DP_MODES = ("none", "sample", "central")
STRATEGIES = (
    "fedavg",
    "fedprox",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "multikrum",
    "bulyan",
    "qfedavg",
)
# Keys whose value may be "auto": shared.dp_defaults chooses (docs/privacy.md).
AUTO_KEYS = ("activation", "local-epochs", "batch-size", "learning-rate")
# Aggregators whose output is not a (weighted) mean of the updates: the central
# DP wrappers calibrate noise to the sensitivity of a mean, so they do not compose.
NON_MEAN_AGGREGATORS = ("fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")


@dataclass(frozen=True)
class DataConfig:
    """Which data the federation learns from and how it is split in simulation."""

    dataset: str
    eval_data_path: str
    label_column: str
    impute: str
    partitioning: str
    dirichlet_alpha: float
    shards_per_client: int
    partition_seed: int
    node_data_dir: str


@dataclass(frozen=True)
class TrainConfig:
    """Local training on each node.

    ``initial_weights`` is a state_dict file on the coordinator ("" = the
    random weights of ``model_seed``); ``trainable`` the comma-separated globs
    of the parameters trained and exchanged every round
    (:mod:`fedge.shared.trainable`), the others frozen.

    ``"auto"`` in the run config (the default of ``activation``,
    ``local-epochs``, ``batch-size`` and ``learning-rate``) lets
    :mod:`fedge.shared.dp_defaults` choose: ``activation`` and ``learning_rate`` are
    resolved here (they depend on the DP mode and clipping norm only);
    ``local_epochs`` and ``batch_size`` stay None, since under sample DP they
    depend on the node's example count: read them through
    :func:`fedge.shared.privacy_plan.local_schedule`. ``ema_decay`` > 0: the node
    releases an exponential moving average of its weights over the round's
    steps instead of the last iterate (:mod:`fedge.client.weight_averaging`).
    """

    model: str
    activation: str
    model_seed: int
    local_epochs: int | None
    batch_size: int | None
    learning_rate: float
    momentum: float
    initial_weights: str
    trainable: str
    ema_decay: float


@dataclass(frozen=True)
class DPConfig:
    """Differential privacy.

    ``mode="sample"``: DP-SGD on every client (Opacus). ``noise_multiplier`` > 0
    is used as given; 0 means calibrate it from ``target_epsilon`` for the whole
    planned run. ``target_epsilon`` is also each client's budget. ``target_delta``
    0 means "choose below 1/n of the client's examples".
    ``mode="central"``: user-level DP with Flower's server-side clipping wrapper.
    ``fix_model``: build the model with Opacus's ``ModuleValidator.fix``
    applied (:mod:`fedge.shared.private_model`), in every mode.
    ``augment_multiplicity`` K >= 1: DP-SGD trains on K augmented views of
    each example, averaged before the clip (:mod:`fedge.shared.augmentation`);
    0 = off. Only DP-SGD (``mode="sample"``) uses it.
    """

    mode: str
    noise_multiplier: float
    target_epsilon: float
    target_delta: float
    max_grad_norm: float
    accountant: str
    clipping_norm: float
    fix_model: bool
    augment_multiplicity: int


@dataclass(frozen=True)
class StrategyConfig:
    """The aggregation strategy (Flower's own implementations)."""

    name: str
    fraction_train: float
    fraction_evaluate: float
    min_nodes: int
    proximal_mu: float
    server_learning_rate: float
    server_momentum_beta1: float
    server_momentum_beta2: float
    tau: float
    trim_beta: float
    num_malicious_nodes: int
    num_nodes_to_select: int
    qffl_q: float

    @property
    def local_proximal_mu(self) -> float:
        """The FedProx coefficient of a node's local training: 0 unless FedProx runs.

        ``proximal-mu`` has a default under every strategy; only FedProx's
        nodes add the proximal term (Li et al., 2020).
        """
        return self.proximal_mu if self.name == "fedprox" else 0.0


@dataclass(frozen=True)
class RunControlConfig:
    """Where a run writes, how long it waits, and how it checkpoints."""

    num_server_rounds: int
    sampler_seed: int
    output_dir: str
    run_name: str
    checkpoint_interval: int
    node_wait_timeout_s: float
    round_timeout_s: float
    min_replies: int
    max_update_norm: float
    export_onnx: bool
    sign_key: str
    resume: bool
    node_state_dir: str


@dataclass(frozen=True)
class ReportConfig:
    """What a run reports beyond the central metrics: per-client figures, the card.

    ``evaluate_interval`` > 0 evaluates the global model on every node's local
    test split every that many rounds; the round that ends the run is evaluated
    whenever ``fairness_report`` is on. ``fairness_max_clients`` > 0 caps how
    many nodes are asked (a sample seeded by the round when more are
    connected; 0 = every node). ``fairness_threshold`` is the accuracy below
    which a client counts as poorly served.
    """

    evaluate_interval: int
    fairness_report: bool
    fairness_max_clients: int
    fairness_threshold: float
    model_description: str


@dataclass(frozen=True)
class RunConfig:
    """The whole resolved run configuration."""

    data: DataConfig
    train: TrainConfig
    dp: DPConfig
    strategy: StrategyConfig
    run: RunControlConfig
    report: ReportConfig

    def to_flat(self) -> dict[str, Any]:
        """Return the kebab-case run-config mapping this config was built from.

        The one shape a config is saved in (``config.json``, checkpoints);
        :func:`from_run_config` turns it back into an equal ``RunConfig``.
        """
        flat: dict[str, Any] = {}
        for section, field_map in SECTION_KEYS.items():
            part = getattr(self, section)
            for key, attr in field_map.items():
                value = getattr(part, attr)
                flat[key] = AUTO if value is None else value
        return flat


_SECTION_TYPES = {
    "data": DataConfig,
    "train": TrainConfig,
    "dp": DPConfig,
    "strategy": StrategyConfig,
    "run": RunControlConfig,
    "report": ReportConfig,
}
_INVALID = object()  # a value that failed its type check


def default_run_config() -> dict[str, Any]:
    """Return the defaults from ``[tool.flwr.app.config]`` in the project's pyproject.

    Looked up next to the installed ``fedge`` package (a checkout, an editable
    install and a FAB unpacked by Flower all keep ``pyproject.toml`` beside it).
    The file is parsed once per modification time, not on every call (config
    loading, every CLI parser and ``fedge status`` ask for the defaults); each
    call returns a fresh dict.
    """
    path = Path(str(resources.files("fedge"))).parent / "pyproject.toml"
    try:
        modified_ns = path.stat().st_mtime_ns
    except OSError:
        modified_ns = None
    if modified_ns is None or not path.is_file():
        raise ConfigError(
            "Cannot find fedge's pyproject.toml next to the 'fedge' package "
            f"(looked at {path}); reinstall fedge with `make setup`."
        )
    return dict(_read_app_config(path, modified_ns))


@functools.lru_cache(maxsize=4)
def _read_app_config(path: Path, modified_ns: int) -> Mapping[str, Any]:
    # Keyed by the modification time too, so an edited pyproject is read again.
    with path.open("rb") as f:
        return MappingProxyType(dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"]))


def from_run_config(
    run_config: Mapping[str, Any], *, fill_defaults: bool = False
) -> RunConfig:
    """Build and validate the typed config from a Flower run config.

    Parameters
    ----------
    run_config : mapping
        ``context.run_config`` (kebab-case keys), or overrides of the defaults.
    fill_defaults : bool, default False
        Fill keys missing from ``run_config`` from ``pyproject.toml`` (for
        callers outside Flower, such as the CLI and tests).

    Raises
    ------
    ConfigError
        Listing every unknown key, wrong type and out-of-range value at once.
    """
    defaults = default_run_config()
    # Only fedge's own keys are filled: the pyproject of an app copy may declare
    # other components' keys (a fault-injection run's ``fault-*``), which are
    # neither fedge's to check nor unknown keys of the caller's.
    values = (
        {k: v for k, v in defaults.items() if k in CONFIG_KEYS} if fill_defaults else {}
    )
    values.update(run_config)
    problems: list[str] = []
    unknown = sorted(set(values) - set(CONFIG_KEYS))
    if unknown:
        problems.append(f"unknown keys {unknown}" + _suggestions(unknown, CONFIG_KEYS))
    missing = [k for k in CONFIG_KEYS if k not in values]
    if missing:
        problems.append(f"missing keys {missing}")
    sections: dict[str, Any] = {}
    for section, field_map in SECTION_KEYS.items():
        cls = _SECTION_TYPES[section]
        # Annotations are strings here (from __future__ import annotations).
        types = {f.name: str(f.type) for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, attr in field_map.items():
            if key not in values:
                continue
            if key in AUTO_KEYS and values[key] == AUTO:
                kwargs[attr] = None  # resolved below, or per node
                continue
            value = _coerce(key, values[key], types[attr], problems)
            if value is _INVALID:
                fallback = defaults[key]
                value = (
                    None
                    if key in AUTO_KEYS and fallback == AUTO
                    else _coerce(key, fallback, types[attr], [])
                )
            kwargs[attr] = value
        sections[section] = kwargs
    # Ranges are checked even when some keys were mistyped: those fall back to
    # their (valid) defaults above, so every other problem is still reported.
    if not missing:
        problems.extend(_check_ranges(sections))
    if problems:
        raise ConfigError("Invalid run config: " + "; ".join(problems) + ".", problems)
    _resolve_auto(sections)
    return RunConfig(**{s: _SECTION_TYPES[s](**kw) for s, kw in sections.items()})


def trainable_patterns(trainable: str) -> tuple[str, ...]:
    """Split ``trainable`` (``"GLOB,GLOB"``) into its globs; () when one is empty.

    ``"features.*, classifier.3.*"`` -> ``("features.*", "classifier.3.*")``.
    An empty glob (``""``, ``"a,,b"``, a trailing comma) makes the whole value
    invalid rather than silently matching nothing.
    """
    patterns = tuple(part.strip() for part in trainable.split(","))
    return patterns if all(patterns) else ()


def _resolve_auto(sections: dict[str, dict[str, Any]]) -> None:
    """Replace ``"auto"`` where the DP mode and clipping norm decide it.

    ``learning-rate`` and ``activation`` (:mod:`fedge.shared.dp_defaults`); batch
    size and local epochs stay None until a node's example count is known. The
    rule's learning rate goes with the rule's batch: a batch size the user set
    gets the plain rate.
    """
    train, dp = sections["train"], sections["dp"]
    if train["learning_rate"] is None:
        train["learning_rate"] = auto_learning_rate(
            dp_mode=dp["mode"],
            max_grad_norm=dp["max_grad_norm"],
            rule_batch=train["batch_size"] is None,
        )
    if train["activation"] is None:
        train["activation"] = auto_activation(dp_mode=dp["mode"])


def closest_key(key: str, valid: Iterable[str]) -> str | None:
    """Return the valid key a mistyped ``key`` most likely meant, or None if none is close.

    ``learning_rate`` -> ``learning-rate``, ``rounds`` -> None: a similarity
    cutoff (difflib's ratio >= 0.6) keeps far-fetched guesses out.
    """
    matches = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _suggestions(unknown: Iterable[str], valid: Iterable[str]) -> str:
    """`` (did you mean 'a' for 'b'?)`` for the unknown keys that have a close match."""
    valid = list(valid)
    hints = [
        f"{match!r} for {key!r}"
        for key in unknown
        if (match := closest_key(key, valid)) is not None
    ]
    return f" (did you mean {', '.join(hints)}?)" if hints else ""


def _coerce(key: str, value: Any, type_name: str, problems: list[str]) -> Any:
    """Convert a TOML value to the field's type, recording a problem if it can't."""
    want: dict[str, Callable[[Any], Any]] = {
        "str": str,
        "int": int,
        "float": float,
        "bool": bool,
    }
    # "int | None": the None stands for "auto", handled before coercion.
    kind = str(type_name).removesuffix(" | None")
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, int | float) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
    }[kind]
    if not ok:
        also = f" or {AUTO!r}" if key in AUTO_KEYS else ""
        problems.append(f"'{key}' must be {kind}{also}, got {value!r}")
        return _INVALID
    return want[kind](value)


def _choice(
    problems: list[str], key: str, value: Any, allowed: tuple[str, ...]
) -> None:
    if value not in allowed:
        problems.append(f"'{key}' must be one of {list(allowed)}, got {value!r}")


MODEL_CHOICES = ("auto", "mlp", "cnn", "cnn1d", "gru", "random-conv-linear")


def _model_problems(model: str) -> list[str]:
    """Return the problem with ``model``: not a built-in, or not ``MODULE:CALLABLE``.

    A reference is checked for its form only; it is imported where it is built.
    """
    from fedge.shared.model_reference import is_model_reference, reference_problem

    if is_model_reference(model):
        problem = reference_problem(model)
        return [problem] if problem else []
    if model not in MODEL_CHOICES:
        return [
            f"'model' must be one of {list(MODEL_CHOICES)} or MODULE:CALLABLE "
            f"(your own model), got {model!r}"
        ]
    return []


def _check_ranges(s: dict[str, dict[str, Any]]) -> list[str]:
    """Every range and cross-field rule; returns the problems found."""
    p: list[str] = []
    d, t, dp, st, r = s["data"], s["train"], s["dp"], s["strategy"], s["run"]
    rep = s["report"]
    _choice(p, "partitioning", d["partitioning"], PARTITIONINGS)
    _choice(p, "impute", d["impute"], IMPUTE_MODES)
    if d["dirichlet_alpha"] <= 0:
        p.append(f"'dirichlet-alpha' must be > 0, got {d['dirichlet_alpha']}")
    if d["shards_per_client"] < 1:
        p.append(f"'shards-per-client' must be >= 1, got {d['shards_per_client']}")
    if d["dataset"] == DATASET_FILE and not d["eval_data_path"]:
        p.append(
            f"'dataset' = '{DATASET_FILE}' needs 'eval-data-path': the "
            "coordinator's held-out file for central evaluation"
        )
    p.extend(_model_problems(t["model"]))
    if t["activation"] is not None:
        _choice(p, "activation", t["activation"], ("relu", "tanh"))
    for key, attr in (("local-epochs", "local_epochs"), ("batch-size", "batch_size")):
        if t[attr] is not None and t[attr] < 1:
            p.append(f"'{key}' must be >= 1 or {AUTO!r}, got {t[attr]}")
    if t["learning_rate"] is not None and not t["learning_rate"] > 0:
        p.append(f"'learning-rate' must be > 0 or {AUTO!r}, got {t['learning_rate']}")
    if not 0 <= t["ema_decay"] < 1:
        p.append(f"'ema-decay' must be in [0, 1) (0 = off), got {t['ema_decay']}")
    if not 0 <= t["momentum"] < 1:
        p.append(f"'momentum' must be in [0, 1), got {t['momentum']}")
    if not trainable_patterns(t["trainable"]):
        p.append(
            "'trainable' must be comma-separated globs over parameter names "
            f'("*" = every parameter), got {t["trainable"]!r}'
        )
    _choice(p, "dp-mode", dp["mode"], DP_MODES)
    _choice(p, "accountant", dp["accountant"], ACCOUNTANTS)
    if dp["noise_multiplier"] < 0:
        p.append(f"'noise-multiplier' must be >= 0, got {dp['noise_multiplier']}")
    if dp["mode"] != "none":
        if dp["target_epsilon"] <= 0:
            p.append(f"'target-epsilon' must be > 0, got {dp['target_epsilon']}")
        if not 0 <= dp["target_delta"] < 1:
            p.append(f"'target-delta' must be in [0, 1), got {dp['target_delta']}")
    if dp["augment_multiplicity"] < 0:
        p.append(
            "'augment-multiplicity' must be >= 0 (0 = off, K = views per "
            f"example), got {dp['augment_multiplicity']}"
        )
    if dp["mode"] == "sample" and dp["max_grad_norm"] <= 0:
        p.append(f"'max-grad-norm' must be > 0, got {dp['max_grad_norm']}")
    if dp["mode"] == "central":
        if dp["clipping_norm"] <= 0:
            p.append(f"'clipping-norm' must be > 0, got {dp['clipping_norm']}")
        if dp["noise_multiplier"] <= 0:
            p.append("'dp-mode' = 'central' needs 'noise-multiplier' > 0")
        if st["name"] in NON_MEAN_AGGREGATORS:
            p.append(
                f"'dp-mode' = 'central' does not compose with 'strategy' = "
                f"'{st['name']}': central DP noise is calibrated to the sensitivity "
                "of a mean of clipped updates, which this robust aggregator does "
                "not compute; use fedavg/fedprox/fedadam/fedyogi/fedadagrad"
            )
    _choice(p, "strategy", st["name"], STRATEGIES)
    for key, attr in (("fraction-train", "fraction_train"),):
        if not 0 < st[attr] <= 1:
            p.append(f"'{key}' must be in (0, 1], got {st[attr]}")
    if not 0 <= st["fraction_evaluate"] <= 1:
        p.append(
            f"'fraction-evaluate' must be in [0, 1], got {st['fraction_evaluate']}"
        )
    if st["min_nodes"] < 1:
        p.append(f"'min-nodes' must be >= 1, got {st['min_nodes']}")
    if st["proximal_mu"] < 0:
        p.append(f"'proximal-mu' must be >= 0, got {st['proximal_mu']}")
    if st["server_learning_rate"] <= 0:
        p.append(
            f"'server-learning-rate' must be > 0, got {st['server_learning_rate']}"
        )
    if not 0 <= st["trim_beta"] < 0.5:
        p.append(f"'trim-beta' must be in [0, 0.5), got {st['trim_beta']}")
    if r["num_server_rounds"] < 1:
        p.append(f"'num-server-rounds' must be >= 1, got {r['num_server_rounds']}")
    if r["checkpoint_interval"] < 1:
        p.append(f"'checkpoint-interval' must be >= 1, got {r['checkpoint_interval']}")
    for key, attr in (
        ("node-wait-timeout-s", "node_wait_timeout_s"),
        ("round-timeout-s", "round_timeout_s"),
    ):
        if r[attr] <= 0:
            p.append(f"'{key}' must be > 0 seconds, got {r[attr]}")
    if r["min_replies"] < 1:
        p.append(f"'min-replies' must be >= 1, got {r['min_replies']}")
    if st["qffl_q"] < 0:
        p.append(f"'qffl-q' must be >= 0, got {st['qffl_q']}")
    if st["name"] == "qfedavg" and dp["mode"] != "none":
        p.append(
            f"'strategy' = 'qfedavg' does not compose with 'dp-mode' = "
            f"'{dp['mode']}': q-FedAvg weights each update by the node's loss, which "
            "DP-SGD does not protect, and its step is not a mean of clipped updates; "
            "use dp-mode 'none' or another strategy"
        )
    if rep["evaluate_interval"] < 0:
        p.append(
            "'evaluate-interval' must be >= 0 (0 = last round only), "
            f"got {rep['evaluate_interval']}"
        )
    if rep["fairness_max_clients"] < 0:
        p.append(
            "'fairness-max-clients' must be >= 0 (0 = every node), "
            f"got {rep['fairness_max_clients']}"
        )
    if not 0 <= rep["fairness_threshold"] <= 1:
        p.append(
            "'fairness-threshold' must be an accuracy in [0, 1], "
            f"got {rep['fairness_threshold']}"
        )
    if r["max_update_norm"] < 0:
        p.append(
            f"'max-update-norm' must be >= 0 (0 = no bound), got {r['max_update_norm']}"
        )
    return p
