"""Calibration, rank selection, model rewriting and fusion."""
