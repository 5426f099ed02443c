"""VAE with KL-gradient anomaly localisation (Zimmerer et al., "Unsupervised Anomaly Localization using Variational
Auto-Encoders", MICCAI 2019, arXiv 1907.02796; code ``MIC-DKFZ/vae-anomaly-experiments``).

Model: Gaussian posterior N(mu, exp(log_std)^2) over ``z``, standard normal prior, Gaussian decoder
p(x|z) = N(x; x_hat, sigma^2) with a fixed likelihood log-std ``log_std`` (the paper's variance knob: lowering it
up-weights reconstruction like a beta-VAE with beta proportional to sigma^2; default 0, sigma = 1). Loss = -ELBO =
sum KL + sum_pixels -log p(x|z), batch mean, analytic KL, one reparameterised sample. ``log_std`` is a log-*std*
everywhere (sampling and loss); the original's MLP script reads the posterior head as a log-variance when sampling
and as a log-std in the loss: we use the log-std reading consistently (a documented deviation).

Architectures (``architecture``): ``conv`` = the brain model (:class:`~lightning_modules.nets.vae.ConvVAENet`,
z = 256, Adam 1e-4, batch 64 in the original) and ``mlp`` = the small-image model (400 hidden, z = 20, Adam 1e-3,
batch 128, sigmoid output).

Scores, computed with z = mu (evaluation mode), all at once; each is one score variant, i.e. its own leaderboard
entry ``<method>[<name>]`` with a pixel map and a slice score:

==========  =====================================================================  ==========================
variant     pixel map                                                              slice score
==========  =====================================================================  ==========================
rec         per-pixel -log p(x|z) without its constant (see below)                 ``rec`` = sum -log p(x|z)
grad_rec    smooth(abs d rec / d x)                                                ``rec``
grad_kl     smooth(abs d KL / d x)                                                 ``kl`` = sum KL
grad_elbo   smooth(abs d (KL + rec) / d x)                                         ``elbo`` = kl + rec
combi       smooth(minmax(abs d KL / d x)) * per-pixel -log p(x|z) (with constant)  ``elbo``
==========  =====================================================================  ==========================

``smooth`` = depthwise 7x7 Gaussian, sigma 3, zero padding (the original's ``smooth_tensor``); ``minmax`` over the
whole evaluation batch as in the original (``combi_normalisation: batch``; the result then depends on the batch
composition, so the evaluation batch size is recorded in the run config), or per image (``image``). Channels of
multi-channel images are summed. The sample scores of the paper are ``rec``, ``kl`` and ``elbo``: read them from
the ``rec``, ``grad_kl`` and ``grad_elbo`` entries.

Scale of ``log_std``. The original brain experiment z-scores every volume inside the brain and uses sigma = 1,
i.e. sigma = one standard deviation of the brain's intensities. NormBench's images are percentile-scaled to [0, 1]
(brain-intensity std about 0.2 on the synthetic brain), so the same likelihood is ``log_std`` = log 0.2 = -1.6, the
brain config's value (``configs/methods/vae.yaml``). The literal 0 on [0, 1] data is a five times wider
likelihood: the KL term dominates, the decoder returns a blurred mean brain and every map of the conv VAE scores
below chance on the synthetic tumours (measured in ``docs/validation.md``). The small-image MLP keeps 0, as its
original experiment runs on [0, 1] pixels.

Deviations, each a documented choice:

* gradients are those of the per-sample terms. The original differentiates the *batch mean*, which scales every
  map by 1 / batch size, so a smaller last batch would not be comparable with calibrated thresholds; rankings within
  a batch are the same.
* the ``rec`` map leaves out the constant ``log_std + log(2 pi) / 2``: the ranking and every threshold-free metric
  are unchanged, and the engine's relative histogram bins keep their resolution (a constant offset of ~0.92 would
  merge differences below ~1e-3). ``combi`` keeps the constant as in the original, so it is not simply the KL
  gradient times the squared error; when ``log_std + log(2 pi) / 2 < 0`` the ``combi`` map is shifted up by that
  constant to stay non-negative (same ranking).
* validation loss (checkpoint selection) is the -ELBO with z = mu, so it is deterministic.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from lightning_modules.base import AnomalyModule, AnomalyOutput
from lightning_modules.nets.smoothing import gaussian_kernel, smooth
from lightning_modules.nets.vae import ConvVAENet, MLPVAENet, gaussian_kl, gaussian_nll, nll_constant

SCORES = ("combi", "rec", "grad_kl", "grad_elbo", "grad_rec")
SLICE_SCORE = {"rec": "rec", "grad_rec": "rec", "grad_kl": "kl", "grad_elbo": "elbo", "combi": "elbo"}
GRADIENT_SCORES = frozenset({"grad_rec", "grad_kl", "grad_elbo", "combi"})


def _at_least_fp32(values: Tensor) -> Tensor:
    """Loss terms in float32 (float64 kept) under mixed precision."""
    return values if values.dtype == torch.float64 else values.float()


def minmax(values: Tensor, per_image: bool) -> Tensor:
    """Scale to [0, 1] over the whole tensor (the original) or per image; a constant input gives zeros."""
    dims = tuple(range(1, values.ndim)) if per_image else tuple(range(values.ndim))
    low, high = values.amin(dim=dims, keepdim=True), values.amax(dim=dims, keepdim=True)
    span = high - low
    return torch.where(span > 0, (values - low) / torch.where(span > 0, span, 1), torch.zeros_like(values))


class VariationalAutoEncoder(AnomalyModule):
    """Zimmerer et al.'s VAE with reconstruction, ELBO-gradient and KL-gradient anomaly scores (module docstring).

    ``image_size`` and ``in_channels`` are linked from the dataset. ``scores``: the variants to evaluate, primary
    first (any subset of ``SCORES``).
    """

    requires_training: ClassVar[bool] = True

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 1,
        architecture: Literal["conv", "mlp"] = "conv",
        z_dim: int = 256,
        channels: list[int] | None = None,
        hidden: int = 400,
        input_repeats: int = 1,
        leaky_slope: float = 0.01,
        log_std: float = 0.0,
        scores: list[str] | None = None,
        combi_normalisation: Literal["batch", "image"] = "batch",
        smoothing_size: int = 7,
        smoothing_sigma: float = 3.0,
        lr: float = 1e-4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        scores = list(scores or SCORES)
        unknown = [s for s in scores if s not in SCORES]
        if unknown or not scores or len(set(scores)) != len(scores):
            raise ValueError(f"scores must be distinct names from {list(SCORES)}, got {scores}")
        if combi_normalisation not in ("batch", "image"):
            raise ValueError(f"combi_normalisation must be 'batch' or 'image', got {combi_normalisation!r}")
        self._scores = tuple(scores)
        if architecture == "conv":
            self.net = ConvVAENet(in_channels, image_size, z_dim, tuple(channels) if channels else None, leaky_slope)
        elif architecture == "mlp":
            self.net = MLPVAENet(in_channels, image_size, z_dim, hidden, input_repeats)
        else:
            raise ValueError(f"architecture must be 'conv' or 'mlp', got {architecture!r}")
        self.register_buffer("smoothing_kernel", gaussian_kernel(smoothing_size, smoothing_sigma), persistent=False)

    @property
    def score_variants(self) -> tuple[str, ...]:
        return self._scores

    @property
    def needs_input_gradients(self) -> bool:  # type: ignore[override]
        return bool(GRADIENT_SCORES.intersection(self._scores))

    # ---- the model ---------------------------------------------------------------------------------------------
    def terms(self, image: Tensor, sample: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(reconstruction, kl [B], rec [B], excess [B,C,H,W])`` for ``image`` (z sampled or z = mu).

        ``rec`` = sum over pixels of -log p(x|z); ``excess`` = the per-pixel -log p(x|z) without its constant
        ``log_std + log(2 pi) / 2`` (computed directly, not by subtraction, so small errors keep their precision).
        The MLP decodes ``input_repeats`` copies; their per-pixel terms are summed into one map."""
        mu, log_std = self.net.encode(image)
        z = mu + torch.randn_like(mu) * torch.exp(log_std) if sample else mu
        decoded = _at_least_fp32(self.net.decode(z))
        repeats = decoded.shape[1] // image.shape[1]
        target = _at_least_fp32(image).repeat(1, repeats, 1, 1)
        excess = gaussian_nll(target, decoded, self.hparams.log_std, constant=False)
        rec = excess.flatten(1).sum(dim=1) + excess[0].numel() * nll_constant(self.hparams.log_std)
        excess = excess.unflatten(1, (repeats, image.shape[1])).sum(dim=1)
        kl = gaussian_kl(_at_least_fp32(mu), _at_least_fp32(log_std))
        return decoded[:, : image.shape[1]], kl, rec, excess

    def negative_elbo(self, image: Tensor, sample: bool) -> tuple[Tensor, Tensor, Tensor]:
        """Batch means of ``(-ELBO, KL, -log p(x|z))``."""
        _, kl, rec, _ = self.terms(image, sample)
        return (kl + rec).mean(), kl.mean(), rec.mean()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss, kl, rec = self.negative_elbo(batch["image"], sample=True)
        size = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({"train/kl": kl, "train/rec": rec}, batch_size=size)
        return loss

    def validation_loss(self, batch: dict[str, Any]) -> Tensor:
        return self.negative_elbo(batch["image"], sample=False)[0]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    # ---- anomaly scores ----------------------------------------------------------------------------------------
    def input_gradients(self, image: Tensor) -> dict[str, Tensor]:
        """The terms of :meth:`terms` (z = mu) and the raw input gradients ``d kl / d x``, ``d rec / d x``
        [B,C,H,W] of the per-sample terms."""
        x = image.detach().clone().to(next(self.parameters()).dtype).requires_grad_(True)
        reconstruction, kl, rec, excess = self.terms(x, sample=False)
        grad_kl, = torch.autograd.grad(kl.sum(), x, retain_graph=True)
        grad_rec, = torch.autograd.grad(rec.sum(), x)
        return {"reconstruction": reconstruction.detach(), "kl": kl.detach(), "rec": rec.detach(),
                "excess": excess.detach(), "grad_kl": grad_kl, "grad_rec": grad_rec}

    def _smooth(self, gradient: Tensor) -> Tensor:
        return smooth(gradient.abs().sum(dim=1, keepdim=True), self.smoothing_kernel)

    def predict_anomaly(self, image: Tensor) -> AnomalyOutput:
        with torch.autocast(self.device.type, enabled=False):  # exact fp32 gradients under mixed precision
            if self.needs_input_gradients:
                parts = self.input_gradients(image)
            else:
                with torch.no_grad():
                    parts = dict(zip(("reconstruction", "kl", "rec", "excess"), self.terms(image, sample=False),
                                     strict=True))
            slice_scores = {"rec": parts["rec"], "kl": parts["kl"], "elbo": parts["kl"] + parts["rec"]}
            excess = parts["excess"].sum(dim=1, keepdim=True)
            constant = nll_constant(self.hparams.log_std) * image.shape[1]
            maps: dict[str, Tensor] = {}
            for name in self._scores:
                if name == "rec":
                    maps[name] = excess
                elif name == "grad_rec":
                    maps[name] = self._smooth(parts["grad_rec"])
                elif name == "grad_kl":
                    maps[name] = self._smooth(parts["grad_kl"])
                elif name == "grad_elbo":
                    maps[name] = self._smooth(parts["grad_kl"] + parts["grad_rec"])
                else:  # combi: the per-pixel NLL with its constant, as in the original
                    weight = minmax(parts["grad_kl"].abs().sum(dim=1, keepdim=True),
                                    per_image=self.hparams.combi_normalisation == "image")
                    combi = smooth(weight, self.smoothing_kernel) * (excess + constant)
                    maps[name] = (combi - min(constant, 0.0)).clamp_min(0)  # >= 0 for log_std < -log(2 pi) / 2
        variants = {name: (maps[name], slice_scores[SLICE_SCORE[name]]) for name in self._scores}
        return AnomalyOutput.from_variants(variants, parts["reconstruction"])
