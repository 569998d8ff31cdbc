"""ONNX: export a checked spec with its weights (export.py)."""
