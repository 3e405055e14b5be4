"""The lean ichrt runtime: DICOM ingest, windowing, ONNX Runtime scoring, worklist, explanations.

Imports only NumPy, Numba, ONNX Runtime, pydicom and click; torch is imported only when a
torch-only feature (Grad-CAM) is asked for.
"""
