"""Encoder/decoder/classifier architectures, one module per dataset family; importing registers them."""
from . import polymnist  # noqa: F401
