"""The end of an exporting run's imports, made while its rounds run.

With ``export-onnx``, the end of a run (:func:`fedge.server.federation.run_federation`)
exports the model with torch's dynamo exporter, whose first use in a process
imports some 1,600 modules (``torch.export``, ``torch._dynamo``, onnxscript's
torchlib, sympy): 2.5 of the 3.7 s the first export took in a coordinator's
process, 0.7 s each export after it; then the model card (matplotlib).
Between its rounds the coordinator mostly waits on its nodes, so a thread
imports these modules after the first round (whose start keeps every core
busy). The end joins the thread before it imports anything
itself: two threads importing one circular set of modules at once can fail
with a deadlock error.

Measured in the demo (10 clients, 10 DP rounds, 2 cores): from the model's save
to ``complete`` 3.4 -> 1.8 s, the rounds after the first 1.1 s longer (the
imports share the cores and the GIL with them), the result line 0.8 s sooner.
A run without the export imports nothing ahead: the card's imports alone saved
0.4 s at the end and cost as much in the rounds.

A module that fails to import here is left to the end of the run, whose own
import then says what is wrong where it matters.
"""

from __future__ import annotations

import importlib
import logging
import threading

from fedge.shared.config import RunConfig

logger = logging.getLogger(__name__)

# The model card, written at the end of every run (reports/model_card.py).
CARD_MODULES = (
    "fedge.reports.model_card",
    "matplotlib.backends.backend_agg",
    "matplotlib.figure",
    "matplotlib.colorbar",
)
# The edge export (edge_export/pipeline.py) and what torch.onnx.export(dynamo=True)
# imports on its first call; names private to torch are skipped when a torch
# version lacks them.
EXPORT_MODULES = (
    "fedge.edge_export.pipeline",
    "torch.export",
    "torch.export._trace",
    "torch._dynamo.aot_compile",
    "torch.onnx._internal.exporter._core",
    "torch.onnx._internal.exporter._compat",
    "torch.onnx._internal.exporter._torchlib.ops",
    "onnxscript.function_libs.torch_lib.ops",
    "onnxruntime.quantization",
    "onnxruntime.tools.convert_onnx_models_to_ort",
    "onnxruntime.tools.mobile_helpers.usability_checker",
    "onnxruntime.tools.onnx_model_utils",
)


def run_end_modules(config: RunConfig) -> tuple[str, ...]:
    """Return the modules to import ahead of this run's end: none without the export."""
    return EXPORT_MODULES + CARD_MODULES if config.run.export_onnx else ()


class RunEndImports:
    """Import ``modules`` in a thread of their own, once :meth:`start` is called.

    Parameters
    ----------
    modules : tuple of str
        Import names, imported in this order.
    """

    def __init__(self, modules: tuple[str, ...]) -> None:
        self.modules = modules
        self._thread: threading.Thread | None = None

    @classmethod
    def for_run(cls, config: RunConfig) -> RunEndImports:
        """Return the imports the end of the run ``config`` describes will need."""
        return cls(run_end_modules(config))

    def start(self) -> None:
        """Start importing (the first call only; nothing to import, no thread)."""
        if self._thread is None and self.modules:
            self._thread = threading.Thread(
                target=self._import_all, name="fedge-run-end-imports", daemon=True
            )
            self._thread.start()

    def wait(self) -> None:
        """Wait until the thread, if started, has imported everything."""
        if self._thread is not None:
            self._thread.join()

    def _import_all(self) -> None:
        for name in self.modules:
            try:
                importlib.import_module(name)
            except Exception as e:  # the end's own import reports it
                logger.debug("not imported ahead of the run's end: %s (%s)", name, e)
