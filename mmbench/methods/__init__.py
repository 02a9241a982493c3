"""Methods: one module each; importing them registers them."""
from . import mmvae, mopoe, mvae  # noqa: F401
