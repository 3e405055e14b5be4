"""ichrt: edge inference runtime for intracranial-hemorrhage triage on head CT.

The distribution maps three top-level folders into this namespace:
``runtime/`` -> :mod:`ichrt.runtime` (lean: NumPy, Numba, ONNX Runtime, pydicom, click),
``export/`` -> :mod:`ichrt.export` (training and ONNX export, needs torch),
``calibration/`` -> :mod:`ichrt.calibration` (INT8 quantization, probability calibration).
Imports go one way: runtime <- calibration, runtime <- export (tests/test_import_graph.py).
:mod:`ichrt.nets` (here) holds the torch networks, shared by export and the runtime's Grad-CAM
twin; it needs torch and imports nothing else from ichrt.
"""

__version__ = "0.1.0"
