"""From the trained global model to a verified ONNX file a device can run."""
