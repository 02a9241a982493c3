"""Datasets: one module each; importing them registers them."""
from . import polydigits, polymnist  # noqa: F401
