"""Training and ONNX export of ichrt models (needs the ``export`` extra: torch, torchvision, onnx)."""
