"""Encoder/decoder/classifier architectures, one module per dataset family; the registry imports each."""
