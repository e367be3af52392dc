"""Datasets: built-in ones that ship inside installed packages, and users' own files.

Nothing here downloads anything. Tables and images come from data bundled
inside the installed scikit-learn package (``synthetic`` is built by
scikit-learn at run time, seeded), split 75/25 (stratified, seed 0) identically
on every call. Sensor time series (``basic-motions``, ``pickup-gesture``) are
UEA/UCR archive files bundled inside aeon's wheel, read with aeon's own ``.ts``
reader and kept in the archive's own train/test split; aeon is the optional
``series`` extra. User files are CSV, Parquet or ``.npz``; :func:`read_table`
turns each into a DataFrame and :mod:`fedge.shared.preprocessing` encodes it.

``.npz`` layout: arrays ``x`` and ``y`` of equal length. ``x`` of shape
``(n, d)`` becomes a table with columns ``x0 .. x{d-1}``; ``x`` of shape
``(n, C, H, W)`` becomes flat pixel columns ``x0 ..`` with
``frame.attrs[IMAGE_SHAPE_ATTR] = (C, H, W)``, from which
:func:`~fedge.shared.preprocessing.fit_preprocessing` fits an image encoding; ``x`` of
shape ``(n, channels, steps)`` is a set of time series (flat channel-major
columns, ``frame.attrs[SERIES_SHAPE_ATTR] = (channels, steps)``; a shorter series
ends in all-NaN steps). ``y`` goes into the label column (``"label"`` unless the
caller names another).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedge.shared.errors import DataError
from fedge.shared.lazy_import import lazy_module
from fedge.shared.preprocessing import (
    IMAGE_SHAPE_ATTR,
    SERIES_SHAPE_ATTR,
    Preprocessing,
    fit_preprocessing,
    fit_series,
)

if TYPE_CHECKING:
    import pandas as pd
else:
    # pandas costs ~0.4 s to import; a node reading cached arrays never needs it.
    pd = lazy_module("pandas")

# Built-in time series: fedge name -> the archive problem aeon's wheel bundles.
AEON_PROBLEMS = {
    "basic-motions": "BasicMotions",  # 6 channels (accelerometer, gyroscope) x 100
    "pickup-gesture": "PickupGestureWiimoteZ",  # 1 channel, 29-361 steps, 10 classes
}
AEON_PIN = "aeon==1.6.0"
BUILTIN_DATASETS = ("digits", "breast-cancer", "synthetic", *AEON_PROBLEMS)
SUPPORTED_SUFFIXES = (".csv", ".parquet", ".npz")
BUILTIN_LABEL_COLUMN = "label"
BUILTIN_TEST_FRACTION = 0.25
DIGITS_FILE = "digits.csv.gz"  # in sklearn/datasets/data
DIGITS_CLASSES = 10
BUILTIN_SPLIT_SEED = 0
SPLITS = ("train", "test")
# The synthetic set: large enough that each of 1,000 clients holds >= 20 training
# examples (24,000 in the train split, 24 per client under iid), small enough
# (2.6 MB of features) that every virtual client process may build it.
SYNTHETIC_EXAMPLES = 32_000
SYNTHETIC_FEATURES = 20
SYNTHETIC_INFORMATIVE = 10
SYNTHETIC_CLASSES = 4
SYNTHETIC_SEED = 0


@dataclass(frozen=True, eq=False)
class Dataset:
    """Encoded examples and labels, with the encoding that produced them.

    Parameters
    ----------
    x : ndarray of float32, shape ``(n, *preprocessing.input_shape)``
    y : ndarray of int64, shape ``(n,)``
        Class indices into ``preprocessing.class_names``.
    preprocessing : Preprocessing
    source : str
        Where the data came from, e.g. ``"digits[train]"`` or a file path.
    """

    x: np.ndarray
    y: np.ndarray
    preprocessing: Preprocessing
    source: str

    def __post_init__(self) -> None:
        """Check that features and labels have the same length."""
        if len(self.x) != len(self.y):
            raise DataError(
                f"{self.source}: {len(self.x)} examples but {len(self.y)} labels"
            )
        expected = self.preprocessing.input_shape
        if tuple(self.x.shape[1:]) != tuple(expected):
            raise DataError(
                f"{self.source}: examples have shape {tuple(self.x.shape[1:])}, "
                f"expected {tuple(expected)}"
            )

    def __len__(self) -> int:
        """Return the number of examples."""
        return len(self.y)

    def subset(self, indices: np.ndarray) -> Dataset:
        """Return the examples at ``indices`` (copies), same preprocessing."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise DataError(
                f"{self.source}: subset indices must lie in [0, {len(self)}), "
                f"got range [{indices.min()}, {indices.max()}]"
            )
        return Dataset(
            self.x[indices], self.y[indices], self.preprocessing, self.source
        )

    def fingerprint(self) -> str:
        """Return 16 hex chars of SHA-256 over shapes, dtypes and bytes of x and y."""
        h = hashlib.sha256()
        for array in (self.x, self.y):
            h.update(f"{array.dtype.str}{array.shape}".encode())
            h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()[:16]


# ---------------------------------------------------------------- splitting
def split_indices(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/test indices, stratified when every class has >= 2 examples.

    ``labels`` may be any hashable values (class names or indices).
    """
    n = len(labels)
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if n < 2:
        raise DataError(f"cannot split {n} example(s) into train and test sets")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() >= 2:
        test_parts = []
        for cls, count in zip(classes, counts, strict=True):
            members = rng.permutation(np.flatnonzero(labels == cls))
            n_test = min(max(round(count * test_fraction), 1), count - 1)
            test_parts.append(members[:n_test])
        test = np.concatenate(test_parts)
    else:
        n_test = min(max(round(n * test_fraction), 1), n - 1)
        test = rng.permutation(n)[:n_test]
    is_test = np.zeros(n, dtype=bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def split_train_test(
    dataset: Dataset, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Split into train and test parts.

    Stratified by class when every class has at least two examples (each
    class then has at least one example on each side), else a plain random
    split. Same seed, same split.

    Raises
    ------
    DataError
        ``test_fraction`` outside (0, 1) or fewer than two examples.
    """
    train, test = split_indices(dataset.y, test_fraction, seed)
    return dataset.subset(train), dataset.subset(test)


# ---------------------------------------------------------------- built-ins
def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.flags.writeable = False


def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """Read scikit-learn's digits file as ``load_digits`` does, without importing it.

    Importing scikit-learn (and the SciPy it pulls in) costs about 0.9 s of
    CPU; every simulated client and the coordinator load the digits at start,
    so that import sat on every run's path to its first round. The file is
    the one ``sklearn.datasets.load_digits`` reads (8x8 pixel counts, then
    the label, per line); ``find_spec`` locates the package without running it.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the digits data set needs scikit-learn, which is not installed"
        )
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / DIGITS_FILE
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


@functools.cache  # lru_cache without a bound
def _builtin(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, Preprocessing]:
    """Load a built-in once per process: features, labels, train mask, encoding."""
    if name in AEON_PROBLEMS:
        return _aeon_builtin(name)
    if name == "digits":
        features, target = _digits_table()
        raw = features.reshape(-1, 1, 8, 8)
        y = target.astype(np.int64)
        is_train = np.zeros(len(y), dtype=bool)
        is_train[split_indices(y, BUILTIN_TEST_FRACTION, BUILTIN_SPLIT_SEED)[0]] = True
        prep = Preprocessing(
            kind="image",
            label_column=BUILTIN_LABEL_COLUMN,
            class_names=tuple(str(c) for c in range(DIGITS_CLASSES)),
            image_shape=(1, 8, 8),
            pixel_scale=16.0,  # digits pixels are counts 0..16
        )
        x = prep.transform_features(raw, source="digits")
    elif name == "breast-cancer":
        from sklearn import datasets as skd  # heavy import; only when needed

        bunch = skd.load_breast_cancer()
        frame = pd.DataFrame(bunch.data, columns=list(bunch.feature_names))
        # sklearn's own names, in target order (0 = malignant, 1 = benign).
        class_names = tuple(str(n) for n in bunch.target_names)
        return _tabular_builtin(name, frame, bunch.target, class_names)
    else:  # synthetic
        from sklearn import datasets as skd

        features, target = skd.make_classification(
            n_samples=SYNTHETIC_EXAMPLES,
            n_features=SYNTHETIC_FEATURES,
            n_informative=SYNTHETIC_INFORMATIVE,
            n_classes=SYNTHETIC_CLASSES,
            random_state=SYNTHETIC_SEED,
        )
        frame = pd.DataFrame(
            features, columns=[f"x{i}" for i in range(SYNTHETIC_FEATURES)]
        )
        class_names = tuple(str(c) for c in range(SYNTHETIC_CLASSES))
        return _tabular_builtin(name, frame, target, class_names)
    _readonly(x, y, is_train)
    return x, y, is_train, prep


def _tabular_builtin(
    name: str, frame: pd.DataFrame, target: np.ndarray, class_names: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Preprocessing]:
    """Return a numeric table split 75/25 and standardised with train statistics only."""
    y = target.astype(np.int64)
    is_train = np.zeros(len(y), dtype=bool)
    is_train[split_indices(y, BUILTIN_TEST_FRACTION, BUILTIN_SPLIT_SEED)[0]] = True
    frame = frame.assign(**{BUILTIN_LABEL_COLUMN: y})
    # Standardise with training statistics only, so test data stays unseen.
    prep = fit_preprocessing(
        frame[is_train], label_column=BUILTIN_LABEL_COLUMN, source=name
    )
    prep = replace(prep, class_names=class_names)
    x = prep.transform_features(frame, source=name)
    _readonly(x, y, is_train)
    return x, y, is_train, prep


def _aeon_file(problem: str, split: str) -> tuple[np.ndarray | list[np.ndarray], Any]:
    """Read one bundled ``.ts`` file with aeon's reader; never downloads."""
    try:
        import aeon.datasets as aeon_datasets
    except ImportError as e:
        raise DataError(
            f"the built-in time series need aeon, which is not installed ({e}). "
            f"Install it with `make setup`, or `pip install 'fedge[series]'` then "
            f"`pip install --no-deps {AEON_PIN}`"
        ) from e
    path = (
        Path(aeon_datasets.__file__).parent / "data" / problem / f"{problem}_{split}.ts"
    )
    if not path.is_file():
        raise DataError(
            f"{path} is not in the installed aeon; fedge reads the copy bundled "
            f"in aeon's wheel and never downloads. Reinstall {AEON_PIN}"
        )
    return aeon_datasets.load_from_ts_file(str(path))  # type: ignore[no-any-return]


def _aeon_builtin(
    name: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Preprocessing]:
    """Load a bundled archive problem in its own split, encoded with train stats."""
    problem = AEON_PROBLEMS[name]
    train_x, train_y = _aeon_file(problem, "TRAIN")
    test_x, test_y = _aeon_file(problem, "TEST")
    labels = np.concatenate([np.asarray(train_y), np.asarray(test_y)]).astype(str)
    names = sorted(set(labels.tolist()))
    if all(n.lstrip("-").isdigit() for n in names):
        names.sort(key=int)
    class_names = tuple(names)
    prep = fit_series(
        list(train_x),
        class_names=class_names,
        label_column=BUILTIN_LABEL_COLUMN,
        source=f"{name}[train]",
    )
    x = np.concatenate(
        [prep.transform_features(list(part), source=name) for part in (train_x, test_x)]
    )
    index = {c: i for i, c in enumerate(class_names)}
    y = np.array([index[label] for label in labels], dtype=np.int64)
    is_train = np.arange(len(y)) < len(train_y)
    _readonly(x, y, is_train)
    return x, y, is_train, prep


def load_builtin(name: str, split: str) -> Dataset:
    """Load a built-in dataset's fixed train or test split.

    Parameters
    ----------
    name : {"digits", "breast-cancer", "synthetic", "basic-motions", "pickup-gesture"}
        ``digits``: 1797 8×8 grey images, 10 classes, pixels scaled by 1/16.
        ``breast-cancer``: 569 rows, 30 numeric features standardised with
        train-split statistics, classes ``("malignant", "benign")``.
        ``synthetic``: 32,000 rows of scikit-learn's ``make_classification``
        (seed 0; 20 features of which 10 informative, 4 classes ``"0".."3"``),
        built at run time, standardised with train-split statistics.
        ``basic-motions``: 80 recordings (40 train, 40 test) of a smartwatch's
        accelerometer and gyroscope, 6 channels × 100 steps, 4 activities.
        ``pickup-gesture``: 100 recordings (50/50) of a Wiimote's Z-axis
        accelerometer, 1 channel of 29 to 361 steps (padded to the longest
        training one), 10 gestures. Both standardised per channel with train
        statistics; they need aeon (the ``series`` extra).
    split : {"train", "test"}
        The stratified 75/25 split with seed 0 (the time series: the archive's
        own split); identical on every call.

    Returns
    -------
    Dataset
        Fresh (writable) copies of the cached arrays.

    Raises
    ------
    DataError
        Unknown name or split.
    """
    if name not in BUILTIN_DATASETS:
        raise DataError(
            f"unknown built-in dataset {name!r}; valid names: {list(BUILTIN_DATASETS)}"
        )
    if split not in SPLITS:
        raise DataError(f"split must be one of {list(SPLITS)}, got {split!r}")
    x, y, is_train, prep = _builtin(name)
    mask = is_train if split == "train" else ~is_train
    return Dataset(x[mask], y[mask], prep, f"{name}[{split}]")


# ---------------------------------------------------------------- user files
def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError as e:
        raise DataError(f"cannot read CSV file {path}: file is empty ({e})") from e
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise DataError(
            f"cannot read CSV file {path}: {str(e).strip()}. Is it a "
            "comma-separated UTF-8 file with a header row and the same number "
            "of fields on every row?"
        ) from e


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"cannot read Parquet file {path}: {e}") from e


def _read_npz(path: Path, label_column: str) -> pd.DataFrame:
    try:
        with np.load(path, allow_pickle=False) as archive:
            found = sorted(archive.files)
            if "x" not in found or "y" not in found:
                raise DataError(
                    f"{path} must contain arrays 'x' and 'y'; arrays found: {found}"
                )
            x, y = archive["x"], archive["y"]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"cannot read .npz file {path}: {e}") from e
    if y.ndim != 1:
        raise DataError(f"{path}: 'y' must be 1-D, got shape {y.shape}")
    if len(x) != len(y):
        raise DataError(
            f"{path}: 'x' has {len(x)} rows but 'y' has {len(y)}; they must match"
        )
    if x.ndim not in (2, 3, 4):
        raise DataError(
            f"{path}: 'x' must have shape (n, d) for a table, (n, channels, steps) "
            f"for time series or (n, C, H, W) for images, got {x.shape}"
        )
    flat = x.reshape(len(x), -1)
    frame = pd.DataFrame(flat, columns=[f"x{i}" for i in range(flat.shape[1])])
    frame[label_column] = y
    if x.ndim == 3:
        frame.attrs[SERIES_SHAPE_ATTR] = x.shape[1:]
    elif x.ndim == 4:
        frame.attrs[IMAGE_SHAPE_ATTR] = x.shape[1:]
    return frame


def read_table(path: str | Path, *, label_column: str = "label") -> pd.DataFrame:
    """Read a CSV, Parquet or ``.npz`` file into a DataFrame.

    Parameters
    ----------
    path : str or Path
    label_column : str
        For ``.npz`` only: the column ``y`` is stored under (default ``"label"``).

    Returns
    -------
    DataFrame
        For image ``.npz`` files, flat pixel columns ``x0 ..`` with
        ``attrs[IMAGE_SHAPE_ATTR] = (C, H, W)``.

    Raises
    ------
    DataError
        Missing file, unsupported suffix, or a file that cannot be parsed.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_file():
        raise DataError(f"data path is not a file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix == ".npz":
        return _read_npz(path, label_column)
    raise DataError(
        f"unsupported data file type {path.suffix!r} for {path}; "
        f"supported: {list(SUPPORTED_SUFFIXES)}"
    )


def encode_table(frame: pd.DataFrame, prep: Preprocessing, source: str) -> Dataset:
    """Encode a table read from ``source`` with a fitted preprocessing.

    Row numbers in errors count the rows of ``frame``: pass the whole file.

    Raises
    ------
    DataError
        No rows, a missing label or feature column, bad values, unknown labels.
    """
    if len(frame) == 0:
        raise DataError(f"{source} has no data rows")
    if prep.label_column not in frame.columns:
        raise DataError(
            f"label column {prep.label_column!r} not found in {source}; "
            f"columns found: {[str(c) for c in frame.columns]}"
        )
    x = prep.transform_features(frame, source=source)
    y = prep.encode_labels(frame[prep.label_column], source=source)
    return Dataset(x, y, prep, source)


def load_file(path: str | Path, preprocessing: Preprocessing) -> Dataset:
    """Read a node's data file and encode it with a given (fitted) preprocessing.

    Raises
    ------
    DataError
        Any :func:`read_table` problem, a missing label or feature column, bad
        values, unknown labels, or images of the wrong size.
    """
    frame = read_table(path, label_column=preprocessing.label_column)
    return encode_table(frame, preprocessing, str(path))


def fit_file(path: str | Path, *, label_column: str, impute: str = "none") -> Dataset:
    """Read reference data, fit a preprocessing on it and encode it.

    This is the coordinator's evaluation data; its preprocessing is what
    clients then receive.
    """
    frame = read_table(path, label_column=label_column)
    prep = fit_preprocessing(
        frame, label_column=label_column, impute=impute, source=str(path)
    )
    return encode_table(frame, prep, str(path))
