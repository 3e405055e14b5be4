"""ichrt: edge inference runtime for intracranial-hemorrhage triage on head CT.

The distribution maps three top-level folders into this namespace:
``runtime/`` -> :mod:`ichrt.runtime` (lean: NumPy, Numba, ONNX Runtime, pydicom, click),
``export/`` -> :mod:`ichrt.export` (training and ONNX export, needs torch),
``calibration/`` -> :mod:`ichrt.calibration` (INT8 quantization, probability calibration).
"""

__version__ = "0.1.0"
