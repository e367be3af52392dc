"""Names used on the wire between ServerApp and ClientApp, defined once.

Record keys and metric names are kebab-case, as in Flower (``num-examples``).
"""

# RecordDict entries
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# ConfigRecord entries sent by the server each round
SERVER_ROUND = "server-round"
MODEL_SPEC = "model-spec"  # JSON string, see shared.models.ModelSpec
PREPROCESSING = "preprocessing"  # JSON string, see shared.preprocessing
FEDGE_RUN_ID = "fedge-run-id"  # the same across resumes, unlike Flower's run id
# The coordinator's record of this node's DP-SGD releases (server/privacy_record.py)
RECORD_ROUNDS = "privacy-record-rounds"
RECORD_NOISE_MULTIPLIERS = "privacy-record-noise-multipliers"
RECORD_SAMPLE_RATES = "privacy-record-sample-rates"
RECORD_STEPS = "privacy-record-steps"
# With frozen parameters (``trainable``): SHA-256 of the frozen arrays
# (shared.records.record_sha256). A message then carries only the trainable
# arrays when the node already holds these, else every array once.
FROZEN_SHA256 = "frozen-sha256"

# MetricRecord entries replied by clients
NUM_EXAMPLES = "num-examples"  # Flower's FedAvg weights replies by this key
TRAIN_LOSS = "train-loss"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
# Evaluation replies also carry the local test split's examples per class,
# in class-index order (a list: Flower's MetricRecord holds lists of numbers)
LABEL_COUNTS = "label-counts"
# q-FedAvg: the received global model's loss on the node's training split,
# before local training (F_k(w^t) of Li et al. 2020)
GLOBAL_MODEL_LOSS = "global-model-loss"

# Privacy figures every DP client reply carries (cumulative over the run)
EPSILON = "epsilon"
DELTA = "delta"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
DP_STEPS = "dp-steps"  # DP-SGD steps this node has taken in the run so far
DP_ROUND_STEPS = "dp-round-steps"  # DP-SGD steps released with this reply
REFUSED = "refused"  # 1 when a client declined to train (budget spent); no arrays
# 1 when a node was sent only the trainable arrays but does not hold the frozen
# ones FROZEN_SHA256 names (its state was lost): nothing done, send them all
FROZEN_MISSING = "frozen-missing"

# Node config entries (``flower-supernode --node-config``, or set per virtual
# node by the simulation engine): where a node's data and state live
DATA_PATH = "data-path"  # the node's own CSV/Parquet/.npz file
PARTITION_ID = "partition-id"  # simulation: this node's share of a built-in set
NUM_PARTITIONS = "num-partitions"
STATE_DIR = "state-dir"  # where this node keeps its privacy ledger
