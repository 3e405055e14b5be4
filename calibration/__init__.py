"""Calibration of exported models: INT8 quantization, temperature scaling, operating thresholds."""
