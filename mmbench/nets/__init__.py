"""Encoder/decoder/classifier architectures, one module per dataset family; importing registers them."""
from . import mnist_svhn_text, polymnist  # noqa: F401
