"""Datasets: one module each; importing them registers them."""
from . import polydigits  # noqa: F401
