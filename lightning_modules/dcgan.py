"""DCGAN (Radford et al., ICLR 2016) trained on healthy images, turned into an anomaly detector by AnoGAN's latent
mapping (Schlegl et al., IPMI 2017).

Training (one stage ``gan`` of ``iterations`` batches, manual optimisation): per batch one discriminator update
(BCE with logits, real -> 1, G(z) -> 0) and one generator update (non-saturating, G(z) -> 1); Adam lr 2e-4, beta1
0.5 (beta2 0.999, not stated in the paper); z = 100 ~ N(0, I) (the PyTorch reference DCGAN; the paper drew z
uniformly); networks of :mod:`lightning_modules.nets.dcgan` (64 or 128 px); images in [-1, 1]; no augmentation.

Anomaly detection (AnoGAN): for each test image, z is searched through the frozen G and D
(:func:`~lightning_modules.gan.anogan_mapping`) for ``mapping_steps`` Adam steps (faithful 500) on
L(z) = (1 - lambda) * sum|x - G(z)| + lambda * sum|f(x) - f(G(z))|, lambda = ``mapping_weight`` = 0.1, f = D's last
4 x 4 feature map; all images of a batch are searched together, each with its own z. Map = |x - G(z*)| (channel
mean, [0, 1] image units); score = the final loss L(z*). The paper leaves the optimiser of z open [UNVERIFIED];
Adam with ``mapping_lr`` 1e-2 (chosen so that z can move by O(1) per dimension within a few hundred steps) and the
initial z drawn from the prior with the run's seed are this port's reading. The CPU profile
(``configs/methods/dcgan.yaml``) narrows the networks and shortens training and the search, with the faithful
values in its comments; its 30-step search runs at ``mapping_lr`` 0.05, which finds a better z in the few steps
(measured in ``docs/validation.md``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from lightning_modules.base import AnomalyOutput
from lightning_modules.gan import GANModule, anogan_mapping, to_image_space, to_model_space
from lightning_modules.nets.dcgan import DCGANDiscriminator, DCGANGenerator


class DCGAN(GANModule):
    """DCGAN + AnoGAN mapping; ``image_size`` and ``in_channels`` are linked from the dataset."""

    needs_input_gradients: ClassVar[bool] = True  # the latent search needs autograd at test time

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 1,
        z_dim: int = 100,
        features: int = 64,
        iterations: int = 20_000,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        mapping_steps: int = 500,
        mapping_weight: float = 0.1,
        mapping_lr: float = 1e-2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if iterations < 1 or mapping_steps < 0:
            raise ValueError("iterations must be >= 1 and mapping_steps >= 0")
        if not 0.0 <= mapping_weight <= 1.0:
            raise ValueError(f"mapping_weight must lie in [0, 1], got {mapping_weight}")
        self.z_dim = z_dim
        self.generator = DCGANGenerator(image_size, in_channels, z_dim, features)
        self.discriminator = DCGANDiscriminator(image_size, in_channels, features)

    def stages(self) -> dict[str, int]:
        return {"gan": self.hparams.iterations}

    def train_stage(self, stage: str, real: Tensor) -> None:
        opt_g, opt_d = self.optimizers()
        with self.toggled_optimizer(opt_d):
            with torch.no_grad():
                fake = self.generator(self.noise_like(real))
            logits_real, logits_fake = self.discriminator(real).float(), self.discriminator(fake).float()
            discriminator_loss = (F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
                                  + F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake)))
            self.update(opt_d, discriminator_loss)
        with self.toggled_optimizer(opt_g):
            logits = self.discriminator(self.generator(self.noise_like(real))).float()
            generator_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
            self.update(opt_g, generator_loss)
        self.log_train({"discriminator_loss": discriminator_loss, "generator_loss": generator_loss,
                        "discriminator_real": torch.sigmoid(logits_real).mean(),
                        "discriminator_fake": torch.sigmoid(logits_fake).mean()}, real.shape[0])

    def predict_anomaly(self, image: Tensor) -> AnomalyOutput:
        x = to_model_space(image.float())
        z = torch.randn(x.shape[0], self.z_dim, device=x.device)
        with torch.autocast(device_type=x.device.type, enabled=False):  # a few hundred small steps: keep fp32
            mapping = anogan_mapping(x, self.generator, self.discriminator.features, z, self.hparams.mapping_steps,
                                     self.hparams.mapping_weight, self.hparams.mapping_lr)
        restored = to_image_space(mapping.generated)
        anomaly_map = (image.float() - restored).abs().mean(dim=1, keepdim=True)
        return AnomalyOutput(anomaly_map, mapping.loss, restored)

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        betas = tuple(self.hparams.betas)
        return [torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas),
                torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr, betas=betas)]
