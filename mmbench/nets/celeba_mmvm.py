"""Bimodal CelebA networks of the MM-VAMP authors' code (thomassutter/mmvmvae, `networks/NetworksImgCelebA.py`,
`NetworksTextCelebA.py`, `FeatureExtractorImg.py`, `FeatureExtractorText.py`, `DataGeneratorImg.py`,
`DataGeneratorText.py`, `FeatureCompressor.py` `LinearFeatureCompressor`, `ResidualBlocks.py`; the widths and skip
weights from `config/DatasetConfig.py` `CelebADataConfig`).

The same residual topology as MoPoE's CelebA nets (``celeba_resnet``, mmbench/nets/celeba.py: the block, the
image trunk 64->33->16->8->4->1, the 256->1 text trunk and their transposed mirrors), with three differences:

* width: ``filter_dim`` 64 instead of MoPoE's DIM 128 (image trunk 64, 128, 192, 256, 320 channels; text
  trunk 64, 128, 192, 256, 320, 320, 320);
* skip weights a = b = 1 (output = shortcut + branch) instead of a = 2, b = 0.3, in every block of all four
  networks (`skip_connections_{img,text}_weight_{a,b}` = 1.0);
* one latent, and its heads are bias-free linear maps 320 -> latent for μ and for log σ²
  (`LinearFeatureCompressor(..., bias=False)`); the decoders' first linear layer keeps its bias.

The text decoder returns logits for the categorical likelihood, as that code does. mmbench's CelebA text is
one-hot over the 71-character alphabet of the MoPoE data (data/celeba.py); the mmvmvae loader uses a
41-character alphabet holding the same characters that CelebA's texts use, so the 30 extra input channels are
always zero and the decoder learns to give the 30 extra classes no mass (docs/provenance.md).
"""
from __future__ import annotations

from torch import nn

from ..data.base import Modality
from ..registry import ARCHITECTURES
from .celeba import GaussianHeads, _check, image_generator, image_trunk, text_encoder_widths, text_generator, text_trunk

FILTER_DIM = 64  # mmvmvae CelebADataConfig: filter_dim_img = filter_dim_text = 64
A, B = 1.0, 1.0  # mmvmvae CelebADataConfig: skip_connections_*_weight_a/b = 1.0


@ARCHITECTURES.register("celeba_mmvm")
class CelebAMMVMNets:
    """MM-VAMP (mmvmvae) bimodal-CelebA residual nets: filter_dim 64, skip weights a = b = 1, bias-free μ/log σ² heads."""

    @staticmethod
    def encoder(modality: Modality, latent_dim: int) -> nn.Module:
        if _check(modality) == "image":
            return GaussianHeads(image_trunk(modality.shape[0], FILTER_DIM, A, B), 5 * FILTER_DIM, latent_dim, bias=False)
        widths = text_encoder_widths(FILTER_DIM)
        return GaussianHeads(text_trunk(modality.shape[1], widths, 4, A, B), widths[-1], latent_dim, bias=False)

    @staticmethod
    def decoder(modality: Modality, latent_dim: int) -> nn.Module:
        if _check(modality) == "image":
            return image_generator(latent_dim, modality.shape[0], FILTER_DIM, A, B)
        return text_generator(latent_dim, modality.shape[1], FILTER_DIM, A, B)
