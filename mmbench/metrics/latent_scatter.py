"""The 2-d latent picture of MM-VAMP Figs. 6 and 13: every modality's test representations, one plane.

For each modality m, the posterior means of q(z | x_m) of the (capped) test split are stored in the
run's ``artifacts/latents.npz`` (arrays ``z_<m>`` and ``labels``), and ``mmbench report --plots``
draws them coloured by class (Fig. 6: odor) and by modality (Fig. 13: rat). A 2-d latent space is
plotted as is; a larger one is projected on the first two principal components of all modalities'
points together (recorded in the file), so the modalities stay comparable.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from ..errors import MMBenchError
from ..registry import METRICS
from .context import EvalContext
from .latent import encode_means


@METRICS.register("latent_scatter")
@torch.no_grad()
def latent_scatter(ctx: EvalContext) -> Dict[str, float]:
    """Unimodal posterior means of the test split saved for the 2-d scatter figures (`latent_scatter/points`)."""
    if ctx.out_dir is None:
        raise MMBenchError("latent_scatter writes artifacts/latents.npz and needs a run directory; run it through "
                           "`mmbench evaluate` or `mmbench run`")
    names = ctx.model.names
    means = encode_means(ctx, ctx.test, [(m,) for m in names])
    stacked = np.concatenate(means)
    projection = "identity"
    if stacked.shape[1] > 2:  # first two principal components of all modalities' points together
        centre = stacked.mean(0)
        _, _, vt = np.linalg.svd(stacked - centre, full_matrices=False)
        means = [(z - centre) @ vt[:2].T for z in means]
        projection = "pca"
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    arrays = {f"z_{m}": z.astype(np.float32) for m, z in zip(names, means)}
    np.savez_compressed(ctx.out_dir / "latents.npz", labels=ctx.test.labels.numpy(), names=np.array(names),
                        projection=np.array(projection), **arrays)
    return {"latent_scatter/points": float(len(ctx.test) * len(names))}
