"""Datasets: one module each; the registry imports every module here (importing registers it)."""
