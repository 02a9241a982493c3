"""JMVAE-kl: a joint inference network plus unimodal ones pulled toward it (Suzuki et al. 2016; SMVAE App. A, Eq. 13)."""
from __future__ import annotations

from ..registry import METHODS
from .base import Gaussian, MultimodalVAE, PoEMixin
from .smvae import JointFusion, build_encoders, gaussian_kl, joint_posterior


@METHODS.register("jmvae")
class JMVAE(PoEMixin, MultimodalVAE):
    """JMVAE: ELBO of a joint encoder q(z | X) minus α Σ_m KL(q(z | X) || q(z | x_m)) (SMVAE App. A, Eq. 13).

    * The joint network q_Λ(z | X) has its own per-modality encoders and a fusion MLP (`JointFusion`, see
      smvae.py); the unimodal networks q_φm(z | x_m) are the usual per-modality encoders. Its ELBO has KL weight 1.
    * Option `alpha` (default null = cfg.beta): Eq. 13 weights both KL terms with the same β as SMVAE's Eq. 11
      (β = 1 in the paper, §5), so a β sweep moves JMVAE and SMVAE alike; set `alpha` to decouple it.
    * encode_subsets: the full set uses the joint network. JMVAE has no network for a strict subset (it would need
      one per subset), and App. A contrasts it with SMVAE as "aggregation by PoE is not used": a single modality
      uses its unimodal network as is, and a larger strict subset (only when M > 2) the PoE of its unimodal
      networks *without* a prior expert (our extension; it reduces to the unimodal network for one modality).
    """

    paper = "SMVAE (ICLR 2022 submission), App. A, Eq. (13) (JMVAE-kl, Suzuki et al. 2016)"
    options = {"alpha": None}
    # α weighs a KL divergence as β does (Eq. 13), so it is >= 0 as method.beta is
    option_rules = {"alpha": {"type": float, "null": "method.beta", "ge": 0}}

    def __init__(self, modalities, cfg, architecture: str):
        super().__init__(modalities, cfg, architecture)
        self.joint_encoders = build_encoders(self.modalities, architecture, self.latent_dim)
        self.joint_fusion = JointFusion(len(self.names), self.latent_dim)

    @property
    def alpha(self):
        """Eq. 13's α: the option, or β (read when the loss runs, as a packed β sweep gives each run its own)."""
        return self.beta if self.opt["alpha"] is None else float(self.opt["alpha"])

    def prior_expert(self, subset) -> bool:
        return False

    def joint(self, x):
        return joint_posterior(self.joint_encoders, self.joint_fusion, x, self.names)

    def encode_subsets(self, x, subsets):
        full = set(self.names)
        strict = [s for s in subsets if set(s) != full]
        q_strict = iter(PoEMixin.encode_subsets(self, x, strict) if strict else [])
        q_joint = self.joint(x) if len(strict) < len(subsets) else None
        return [q_joint if set(s) == full else next(q_strict) for s in subsets]

    def loss(self, x):
        q = self.joint(x)
        nll = self.weighted_nll(q.rsample(), x)
        kl = q.kl_standard_normal()
        mu, logvar = self.unimodal(x, self.names)
        # Eq. 13: KL(q(z|X) || q(z|x_m)) for every modality, the joint posterior first.
        div = self.alpha * gaussian_kl(q[None], Gaussian(mu, logvar)).sum(0)
        loss = (nll + kl + div).mean()
        return loss, {"loss": loss.detach(), "nll": nll.mean().detach(), "kl": kl.mean().detach(), "div": div.mean().detach()}

