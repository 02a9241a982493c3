"""Datasets: one module each; importing them registers them."""
from . import celeba, mnist_svhn_text, polydigits, polymnist  # noqa: F401
