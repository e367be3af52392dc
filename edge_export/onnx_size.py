"""Where an ONNX file's bytes go, and dropping the ones a runtime never reads.

An int8 file is only about a quarter of its float file when the weights are
most of the file. For the 3.3k-parameter time-series CNN they are not: the
fedge metadata a device needs, the graph's nodes and the float parameters
quantisation leaves (biases, normalisation scales) are fixed costs that int8
does not shrink. :func:`size_breakdown` measures each part exactly, so the
benchmark and the README can say which part stops a size target.

:func:`drop_runtime_unused` removes what ONNX Runtime recomputes or ignores
when it loads a model: the shape annotations (``value_info``, re-inferred at
load), opset imports of domains no node uses (ONNX Runtime's quantiser
declares nine) and the quantiser's own metadata keys. Every file fedge writes
goes through it, float and int8 alike, so a size ratio between them measures
quantisation, not clean-up.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import onnx

from fedge.shared.errors import ModelError

# Metadata keys ONNX Runtime's quantisation pre-processor adds (it records
# that shape inference ran); nothing reads them back.
_PREPROCESSOR_KEYS = ("onnx.infer", "onnx.quant.pre_process")


def size_breakdown(model: onnx.ModelProto) -> dict[str, int]:
    """Bytes of each part of a serialised ONNX model.

    Each figure is the file's size minus its size without that part, so it
    includes the protobuf framing and the names; ``"other"`` is what remains
    (IR version, producer, graph name, the graph's own tag and length), and the
    figures add up to the size.

    Parts of the graph share one piece of framing, the graph's length prefix:
    when removing a part shortens that varint, the byte saved is counted in
    that part, and again in every other part whose removal shortens it. The
    header bytes in ``"other"`` absorb this for any real export; a model whose
    parts add up to more than its size is refused instead of reported with a
    negative ``"other"``.

    Returns
    -------
    dict of str to int
        ``"initializers <dtype>"`` per element type (e.g. ``"initializers
        INT8"``: quantised weights), ``"metadata fedge"`` (the device's
        preprocessing, labels, provenance), ``"metadata other"``, ``"nodes"``
        (operators, their attributes and tensor names), ``"value_info"``,
        ``"inputs/outputs"``, ``"opset imports"``, ``"other"`` (>= 0) and
        ``"total"``.

    Raises
    ------
    ModelError
        If the parts add up to more than the file (``"other"`` would be
        negative): no breakdown is returned, so none that does not add up is
        printed.
    """
    total = int(model.ByteSize())

    def saved_without(change: Callable[[onnx.ModelProto], object]) -> int:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        change(copy)
        return total - int(copy.ByteSize())

    def keep_initializers(copy: onnx.ModelProto, dtype: int) -> None:
        kept = [t for t in copy.graph.initializer if t.data_type != dtype]
        del copy.graph.initializer[:]
        copy.graph.initializer.extend(kept)

    def keep_metadata(copy: onnx.ModelProto, fedge: bool) -> None:
        kept = [p for p in copy.metadata_props if p.key.startswith("fedge.") != fedge]
        del copy.metadata_props[:]
        copy.metadata_props.extend(kept)

    parts: dict[str, int] = {}
    for dtype in sorted({t.data_type for t in model.graph.initializer}):
        name = onnx.TensorProto.DataType.Name(dtype)
        parts[f"initializers {name}"] = saved_without(
            functools.partial(keep_initializers, dtype=dtype)
        )
    parts["metadata fedge"] = saved_without(lambda c: keep_metadata(c, True))
    parts["metadata other"] = saved_without(lambda c: keep_metadata(c, False))
    parts["nodes"] = saved_without(lambda c: c.graph.ClearField("node"))
    parts["value_info"] = saved_without(lambda c: c.graph.ClearField("value_info"))
    parts["inputs/outputs"] = saved_without(
        lambda c: (c.graph.ClearField("input"), c.graph.ClearField("output"))
    )
    parts["opset imports"] = saved_without(lambda c: c.ClearField("opset_import"))
    counted = sum(parts.values())
    if counted > total:
        raise ModelError(
            f"cannot break down this ONNX model's {total} bytes: its parts add up "
            f"to {counted}, {counted - total} more than the file, expected at most "
            f"the file's size (removing each graph part also shortened the graph's "
            f"length prefix, and that byte was counted once per part); "
            f"no breakdown is returned"
        )
    parts["other"] = total - counted
    parts["total"] = total
    return parts


def drop_runtime_unused(model: onnx.ModelProto) -> None:
    """Remove, in place, what ONNX Runtime re-infers or ignores at load.

    Removed: ``value_info`` (intermediate shapes, inferred again at load),
    opset imports of domains no node uses, and the quantisation
    pre-processor's metadata keys. Kept: the graph, every initializer and
    tensor name, the inputs' and outputs' shapes, and all fedge metadata.
    """
    model.graph.ClearField("value_info")
    used = {node.domain or "" for node in model.graph.node}
    kept = [o for o in model.opset_import if (o.domain or "") in used | {""}]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    props = [p for p in model.metadata_props if p.key not in _PREPROCESSOR_KEYS]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
