"""fedge's common core: models, data, partitioning, records, metrics and config.

Nothing here imports Flower's server or client machinery or onnxruntime; both
sides of a federation (and the edge exporter) build on it.
"""

__version__ = "0.1.0"
