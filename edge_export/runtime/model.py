"""An exported fedge model on a device: load, check, encode, predict.

The package's docstring shows a device loop; :class:`EdgeModel` is all it needs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .encoding import transform_features
from .errors import InputError, ModelFileError
from .inputs import read_input, read_recording
from .metadata import MANIFEST_FILE, EdgeMetadata
from .verification import check_manifest_hash, verify_signature


@dataclass(frozen=True)
class Prediction:
    """Predictions for a batch.

    Attributes
    ----------
    labels : ndarray of str, shape (n,)
        Predicted class names.
    indices : ndarray of int64, shape (n,)
        Predicted class indices.
    probabilities : ndarray of float32, shape (n, k)
        Softmax of the logits; columns follow ``class_labels``.
    class_labels : tuple of str
    """

    labels: np.ndarray
    indices: np.ndarray
    probabilities: np.ndarray
    class_labels: tuple[str, ...]


@dataclass(frozen=True)
class StreamPrediction:
    """One prediction per window of a long recording.

    Attributes
    ----------
    starts : ndarray of int64, shape (n,)
        Index of each window's first step in the recording.
    timestamps : ndarray or None, shape (n,)
        The recording's timestamp at each window's first step, when it had any.
    prediction : Prediction
        Labels and probabilities, one row per window.
    """

    starts: np.ndarray
    timestamps: np.ndarray | None
    prediction: Prediction


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probabilities: np.ndarray = (exp / exp.sum(axis=1, keepdims=True)).astype(
        np.float32
    )
    return probabilities


def session_options(threads: int | None = 1) -> ort.SessionOptions:
    """ONNX Runtime options for small models on a CPU.

    Full graph optimisation (fusions, NCHWc layouts) and sequential execution:
    these models are chains of small ops, where inter-op parallelism only adds
    scheduling overhead. ``threads=None`` lets ONNX Runtime pick.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


class EdgeModel:
    """An exported fedge model with its input encoding, ready to predict.

    Use :meth:`load`; the constructor takes an open session.
    """

    def __init__(
        self, session: ort.InferenceSession, metadata: EdgeMetadata, path: Path
    ):
        self.session = session
        self.metadata = metadata
        self.path = path
        # "unsigned" unless load() checked the signature with a public key.
        self.signature = "unsigned"

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        threads: int | None = 1,
        verify: bool = True,
        public_key: str | os.PathLike[str] | None = None,
    ) -> EdgeModel:
        """Open an ONNX file written by ``fedge export``.

        Parameters
        ----------
        path : path-like
            ``model.onnx`` or ``model.int8.onnx``.
        threads : int or None, default 1
            ONNX Runtime intra-op threads; ``None`` lets it decide.
        verify : bool, default True
            If a ``manifest.json`` lies beside the model and lists it, refuse
            the model unless its SHA-256 matches.
        public_key : path-like, optional
            The exporter's public key (PEM). Then the manifest beside the
            model must carry a valid signature by that key and list the
            model with its hash (:func:`verify_signature`). Without it the
            signature is not checked: ``signature`` says ``"unsigned"``.

        Raises
        ------
        ModelFileError
            Missing file, not ONNX, no fedge metadata, or a hash mismatch.
        SignatureError
            ``public_key`` given and the signature missing or wrong.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"model file not found: {path}")
        signature = "unsigned"
        if public_key is not None:
            verify_signature(path.parent / MANIFEST_FILE, public_key)
            check_manifest_hash(path, required=True)
            signature = f"verified with {public_key}"
        elif verify:
            check_manifest_hash(path)
        try:
            session = ort.InferenceSession(
                str(path), session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own untyped pybind errors
            raise ModelFileError(
                f"{path} is not a valid ONNX model that ONNX Runtime can load: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else e!r}"
            ) from e
        try:
            props = session.get_modelmeta().custom_metadata_map
        except UnicodeDecodeError as e:
            raise ModelFileError(
                f"{path}: its metadata is not UTF-8 text (corrupted bytes: {e}); "
                "re-export the model or restore the file"
            ) from e
        metadata = EdgeMetadata.from_props(props, source=str(path))
        inputs = [i.name for i in session.get_inputs()]
        if metadata.input_name not in inputs:
            raise ModelFileError(
                f"{path}: metadata names input {metadata.input_name!r} but the "
                f"graph's inputs are {inputs}"
            )
        model = cls(session, metadata, path)
        model.signature = signature
        return model

    @property
    def class_labels(self) -> tuple[str, ...]:
        """Class names in logit order."""
        return self.metadata.class_labels

    def transform(self, data: Any, *, source: str = "input") -> np.ndarray:
        """Encode raw inputs (see :func:`transform_features`)."""
        return transform_features(self.metadata.preprocessing, data, source=source)

    def logits(self, encoded: np.ndarray) -> np.ndarray:
        """Run the graph on already-encoded inputs; returns ``(n, k)`` logits.

        A graph with a fixed batch size (``model.fixed.onnx``) is fed that many
        examples per call.
        """
        encoded = self._check_encoded(encoded)
        names = [self.metadata.output_name]
        batch = self.session.get_inputs()[0].shape[0]
        if not isinstance(batch, int) or batch < 1 or len(encoded) == batch:
            (out,) = self.session.run(names, {self.metadata.input_name: encoded})
            return np.asarray(out)
        if len(encoded) % batch:
            raise InputError(
                f"{self.path.name} takes batches of exactly {batch}; got "
                f"{len(encoded)} examples, not a multiple of {batch}"
            )
        outputs = [
            self.session.run(names, {self.metadata.input_name: encoded[i : i + batch]})[
                0
            ]
            for i in range(0, len(encoded), batch)
        ]
        if not outputs:
            return np.zeros((0, len(self.class_labels)), dtype=np.float32)
        return np.concatenate(outputs)

    def predict(self, data: Any, *, source: str = "input") -> Prediction:
        """Encode raw inputs, run the model, return labels and probabilities.

        Parameters
        ----------
        data : ndarray, DataFrame, mapping, or path
            Raw inputs (see :func:`transform_features`), or a ``.csv``/``.npz``/
            ``.parquet`` file path (see :func:`read_input`).
        """
        if isinstance(data, str | os.PathLike):
            source = str(data)
            data = read_input(data)
        probabilities = _softmax(self.logits(self.transform(data, source=source)))
        indices = probabilities.argmax(axis=1).astype(np.int64)
        labels = np.asarray(self.class_labels, dtype=object)[indices]
        return Prediction(labels, indices, probabilities, self.class_labels)

    def stream(
        self,
        recording: Any,
        *,
        window: int | None = None,
        stride: int | None = None,
        timestamps: np.ndarray | None = None,
    ) -> StreamPrediction:
        """Predict each sliding window of one long recording.

        Each window is encoded exactly as a separate example would be (per-
        channel standardisation, cut or padded to the model's length), so the
        result equals predicting every window on its own.

        Parameters
        ----------
        recording : ndarray of shape (channels, steps), or a path
            A ``.csv`` or ``.npz`` file (see :func:`read_recording`).
        window : int, optional
            Steps per window; default the model's own length.
        stride : int, optional
            Steps between window starts; default ``window`` (no overlap).
        timestamps : ndarray, optional
            One per step; the result reports each window's first.

        Raises
        ------
        InputError
            Not a time-series model, bad window or stride, a recording shorter
            than one window or with other channels.
        """
        source = "recording"
        if isinstance(recording, str | os.PathLike):
            source = str(recording)
            recording, timestamps = read_recording(recording)
        prep = self.metadata.preprocessing
        if prep["kind"] != "series":
            raise InputError(
                f"{self.path.name} takes {prep['kind']} inputs, not time series; "
                "predict without --window"
            )
        channels, steps = (int(s) for s in prep["series_shape"])
        window = steps if window is None else window
        stride = window if stride is None else stride
        if window < 1 or stride < 1:
            raise InputError(
                f"window and stride must be >= 1 step, got window {window}, "
                f"stride {stride}"
            )
        recording = np.asarray(recording)
        if recording.ndim != 2 or recording.shape[0] != channels:
            raise InputError(
                f"{source}: this model reads {channels} channel(s); expected a "
                f"recording of shape ({channels}, steps), got {recording.shape}"
            )
        if recording.shape[1] < window:
            raise InputError(
                f"{source} has {recording.shape[1]} steps, fewer than one window "
                f"of {window}; use a smaller --window"
            )
        views = np.lib.stride_tricks.sliding_window_view(recording, window, axis=1)
        windows = views[:, ::stride].transpose(1, 0, 2)  # (n, channels, window)
        starts = np.arange(len(windows), dtype=np.int64) * stride
        prediction = self.predict(np.ascontiguousarray(windows), source=source)
        stamps = None if timestamps is None else np.asarray(timestamps)[starts]
        return StreamPrediction(starts, stamps, prediction)

    def runner(self, batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
        """Return a low-overhead callable for a fixed batch size (encoded inputs).

        Input and output buffers are allocated once and bound to the session
        (``run_with_iobinding``), so a call only copies the input in and runs
        the graph: the fastest path for batch-1 loops on a device. The returned
        array is reused by the next call; copy it to keep it.
        """
        shape = (batch_size, *self.metadata.input_shape[1:])
        in_buffer = np.zeros(shape, dtype=np.float32)
        out_buffer = np.zeros((batch_size, len(self.class_labels)), dtype=np.float32)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(
            self.metadata.input_name, ort.OrtValue.ortvalue_from_numpy(in_buffer)
        )
        binding.bind_ortvalue_output(
            self.metadata.output_name, ort.OrtValue.ortvalue_from_numpy(out_buffer)
        )
        session = self.session

        def run(encoded: np.ndarray) -> np.ndarray:
            np.copyto(in_buffer, encoded)
            session.run_with_iobinding(binding)
            return out_buffer

        return run

    def _check_encoded(self, encoded: np.ndarray) -> np.ndarray:
        expected = tuple(self.metadata.input_shape[1:])
        encoded = np.asarray(encoded)
        if encoded.ndim != len(expected) + 1 or tuple(encoded.shape[1:]) != expected:
            raise InputError(
                f"encoded input must have shape (n, {', '.join(map(str, expected))}), "
                f"got {tuple(encoded.shape)}"
            )
        return np.ascontiguousarray(encoded, dtype=np.float32)
