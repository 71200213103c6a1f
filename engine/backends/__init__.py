"""Inference backends (PyTorch, ONNX Runtime, TensorRT) behind one call (DESIGN.md contract)."""
