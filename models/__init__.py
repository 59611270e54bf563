"""Embedded default model (EfficientNet-Lite0, ONNX), its preprocessing and sample photos."""
