"""The run config's keys: each kebab-case key, its section and its field.

The one place a run-config key (``dp-mode``) maps to the typed field it fills
(``RunConfig.dp.mode``). :mod:`fedge.shared.config` builds and validates the
config with it; run folders map the nested shape older ones saved with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedge.shared.dp_defaults import AUTO

# kebab-case run-config key -> attribute, per section of RunConfig.
SECTION_KEYS: dict[str, dict[str, str]] = {
    "data": {
        "dataset": "dataset",
        "eval-data-path": "eval_data_path",
        "label-column": "label_column",
        "impute": "impute",
        "partitioning": "partitioning",
        "dirichlet-alpha": "dirichlet_alpha",
        "shards-per-client": "shards_per_client",
        "partition-seed": "partition_seed",
        "node-data-dir": "node_data_dir",
    },
    "train": {
        "model": "model",
        "activation": "activation",
        "model-seed": "model_seed",
        "local-epochs": "local_epochs",
        "batch-size": "batch_size",
        "learning-rate": "learning_rate",
        "momentum": "momentum",
        "initial-weights": "initial_weights",
        "trainable": "trainable",
        "ema-decay": "ema_decay",
    },
    "dp": {
        "dp-mode": "mode",
        "noise-multiplier": "noise_multiplier",
        "target-epsilon": "target_epsilon",
        "target-delta": "target_delta",
        "max-grad-norm": "max_grad_norm",
        "accountant": "accountant",
        "clipping-norm": "clipping_norm",
        "fix-model": "fix_model",
        "augment-multiplicity": "augment_multiplicity",
    },
    "strategy": {
        "strategy": "name",
        "fraction-train": "fraction_train",
        "fraction-evaluate": "fraction_evaluate",
        "min-nodes": "min_nodes",
        "proximal-mu": "proximal_mu",
        "server-learning-rate": "server_learning_rate",
        "server-momentum-beta1": "server_momentum_beta1",
        "server-momentum-beta2": "server_momentum_beta2",
        "tau": "tau",
        "trim-beta": "trim_beta",
        "num-malicious-nodes": "num_malicious_nodes",
        "num-nodes-to-select": "num_nodes_to_select",
        "qffl-q": "qffl_q",
    },
    "run": {
        "num-server-rounds": "num_server_rounds",
        "sampler-seed": "sampler_seed",
        "output-dir": "output_dir",
        "run-name": "run_name",
        "checkpoint-interval": "checkpoint_interval",
        "node-wait-timeout-s": "node_wait_timeout_s",
        "round-timeout-s": "round_timeout_s",
        "min-replies": "min_replies",
        "max-update-norm": "max_update_norm",
        "export-onnx": "export_onnx",
        "sign-key": "sign_key",
        "resume": "resume",
        "node-state-dir": "node_state_dir",
    },
    "report": {
        "evaluate-interval": "evaluate_interval",
        "fairness-report": "fairness_report",
        "fairness-max-clients": "fairness_max_clients",
        "fairness-threshold": "fairness_threshold",
        "model-description": "model_description",
    },
}
CONFIG_KEYS = tuple(k for m in SECTION_KEYS.values() for k in m)


def flat_from_nested(nested: Mapping[str, Any]) -> dict[str, Any]:
    """Return the flat run config from the nested shape older run folders saved.

    ``config.json`` and checkpoints written before the flat shape became the
    only one hold ``{"data": {"dataset": ...}, "dp": {"mode": ...}, ...}``
    (each section's fields by attribute name). Fields a section lacks are left
    out, for :func:`fedge.shared.config.from_run_config` to fill or report.
    """
    flat: dict[str, Any] = {}
    for section, field_map in SECTION_KEYS.items():
        part = nested.get(section) or {}
        for key, attr in field_map.items():
            if attr in part:
                flat[key] = AUTO if part[attr] is None else part[attr]
    return flat
