"""Feature extractors for Frechet distances (FID-style) between image sets, all usable offline.

* :func:`load_inception`: the FID Inception-v3 network as NVIDIA's TorchScript file ``inception-2015-12-05.pt``
  (the one StyleGAN2-ADA / StyleGAN3 metrics and clean-fid use; on a machine with network access it is at
  ``https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt``). Its path
  comes from the argument or ``$NORMBENCH_INCEPTION_PATH``; nothing is downloaded. It takes uint8 RGB [N,3,H,W]
  images, resizes them itself and gives 2048 pool features (``return_features=True``). Values computed with it are
  comparable to published FIDs only as far as the images are (grayscale MRI slices repeated to RGB).
* :func:`healthy_encoder_features`: the offline default, a small convolutional autoencoder trained once (fixed seed)
  on the healthy training images of one dataset and cached; features are the global average and global max pooling
  of its encoder output (D = 128). It is a dataset-specific stand-in for Inception: distances computed with it
  rank models on that dataset but are NOT comparable to published FID values, nor across datasets or keys.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import pickle
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.io import atomic_torch_save

INCEPTION_ENV_VAR = "NORMBENCH_INCEPTION_PATH"
INCEPTION_DIM = 2048
ENCODER_WIDTHS = (16, 32, 64, 64)
ENCODER_DIM = 2 * ENCODER_WIDTHS[-1]
DEFAULT_SETTINGS: dict[str, Any] = {"epochs": 3, "batch_size": 32, "seed": 0, "lr": 1e-3}
CACHE_FORMAT = 1


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps [N,C,H,W] images in [0, 1] to [N, D] float32 features (no gradients); ``name`` goes into result rows."""

    name: str

    def __call__(self, images: Tensor) -> Tensor: ...


def _check_images(images: Tensor) -> None:
    if images.ndim != 4 or images.shape[0] < 1:
        raise ValueError(f"expected a non-empty [N,C,H,W] batch, got shape {tuple(images.shape)}")


class InceptionFeatures:
    """Pool features of the FID Inception TorchScript network, fed uint8 RGB images."""

    name = "inception-v3 (local TorchScript)"

    def __init__(self, model: torch.jit.ScriptModule, batch_size: int = 64, device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.batch_size = batch_size
        self.device = torch.device(device)

    @staticmethod
    def to_uint8_rgb(images: Tensor) -> Tensor:
        """[0, 1] images to uint8 ``round(x * 255)``; one channel is repeated to three."""
        if images.shape[1] not in (1, 3):
            raise ValueError(f"Inception features need 1 or 3 channels, got {images.shape[1]}")
        pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return pixels.expand(-1, 3, -1, -1).contiguous() if pixels.shape[1] == 1 else pixels

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        _check_images(images)
        chunks = [
            self.model(self.to_uint8_rgb(images[i : i + self.batch_size]).to(self.device), return_features=True)
            for i in range(0, images.shape[0], self.batch_size)
        ]
        return torch.cat(chunks).reshape(images.shape[0], -1).float().cpu()


def load_inception(
    path: str | os.PathLike | None = None, batch_size: int = 64, device: str | torch.device = "cpu"
) -> tuple[FeatureExtractor | None, str | None]:
    """The Inception extractor from ``path`` or ``$NORMBENCH_INCEPTION_PATH``, or ``(None, reason)`` if absent."""
    if path is None:
        path = os.environ.get(INCEPTION_ENV_VAR)
        if not path:
            return None, f"no Inception network: {INCEPTION_ENV_VAR} is not set (point it at inception-2015-12-05.pt)"
    file = Path(path)
    if not file.is_file():
        return None, f"no Inception network: {file} not found (set {INCEPTION_ENV_VAR} to inception-2015-12-05.pt)"
    model = torch.jit.load(str(file), map_location="cpu")
    return InceptionFeatures(model, batch_size=batch_size, device=device), None


class HealthyAutoencoder(nn.Module):
    """Four stride-2 conv levels (16-32-64-64, ReLU) and a mirrored transposed-conv decoder with a sigmoid output."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        widths = (in_channels, *ENCODER_WIDTHS)
        encoder: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            encoder += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.ReLU()]
        decoder: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths[::-1]):
            decoder += [nn.ConvTranspose2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.ReLU()]
        decoder[-1] = nn.Sigmoid()
        self.in_channels = in_channels
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    def forward(self, images: Tensor) -> Tensor:
        """Reconstruction at the input size (resized back when H or W is not a multiple of 16)."""
        reconstruction = self.decoder(self.encoder(images))
        if reconstruction.shape[-2:] != images.shape[-2:]:
            reconstruction = F.interpolate(reconstruction, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return reconstruction

    def features(self, images: Tensor) -> Tensor:
        """[N, 128]: global average and global max pooling of the encoder output."""
        code = self.encoder(images)
        return torch.cat([code.mean(dim=(2, 3)), code.amax(dim=(2, 3))], dim=1)


def fit_healthy_encoder(
    images: Tensor, epochs: int = 3, batch_size: int = 32, seed: int = 0, lr: float = 1e-3
) -> HealthyAutoencoder:
    """Train the autoencoder on healthy [N,C,H,W] images in [0, 1] (MSE, Adam); same seed -> same weights.

    Initialisation and shuffling use ``seed`` only; the global RNG state is restored afterwards.
    """
    _check_images(images)
    data = images.detach().float().cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = HealthyAutoencoder(data.shape[1])
        shuffle = torch.Generator().manual_seed(seed)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(data.shape[0], generator=shuffle)
            for start in range(0, data.shape[0], batch_size):
                batch = data[order[start : start + batch_size]]
                loss = F.mse_loss(model(batch), batch)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
    return model.eval().requires_grad_(False)


class HealthyEncoderFeatures:
    """Feature extractor around a trained :class:`HealthyAutoencoder`."""

    def __init__(
        self, model: HealthyAutoencoder, key: str, checksum: str, settings: dict[str, Any], batch_size: int = 256
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.name = f"healthy-encoder (trained on {key}, cached)"
        self.checksum = checksum
        self.settings = dict(settings)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, images: Tensor) -> Tensor:
        _check_images(images)
        if images.shape[1] != self.model.in_channels:
            raise ValueError(f"{self.name} takes {self.model.in_channels}-channel images, got {images.shape[1]}")
        chunks = [
            self.model.features(images[i : i + self.batch_size].detach().float().cpu())
            for i in range(0, images.shape[0], self.batch_size)
        ]
        return torch.cat(chunks)


def images_checksum(images: Tensor) -> str:
    """SHA-256 of the images' shape and float32 values."""
    data = images.detach().float().cpu().contiguous()
    digest = hashlib.sha256(repr(tuple(data.shape)).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def _load_cache(file: Path) -> dict[str, Any] | None:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        return None  # unreadable cache: retrain and overwrite


def healthy_encoder_features(
    images_train: Tensor, cache_dir: str | os.PathLike, key: str, **settings: Any
) -> FeatureExtractor:
    """The healthy-encoder extractor for ``key``, from ``cache_dir / f"healthy_encoder_{key}.pt"`` when that file
    matches the training images' checksum and the settings, else trained with :func:`fit_healthy_encoder` and saved
    (atomically) there.

    ``settings``: ``epochs`` (3), ``batch_size`` (32), ``seed`` (0), ``lr`` (1e-3). About 900 images of 64 x 64
    train in a few seconds on 2 CPU cores with the defaults.
    """
    unknown = set(settings) - set(DEFAULT_SETTINGS)
    if unknown:
        raise TypeError(f"unknown healthy-encoder settings: {sorted(unknown)}")
    settings = {**DEFAULT_SETTINGS, **settings}
    _check_images(images_train)
    checksum = images_checksum(images_train)
    file = Path(cache_dir) / f"healthy_encoder_{key}.pt"
    cached = _load_cache(file) if file.is_file() else None
    if (
        isinstance(cached, dict)
        and cached.get("format") == CACHE_FORMAT
        and cached.get("checksum") == checksum
        and cached.get("settings") == settings
    ):
        model = HealthyAutoencoder(int(cached["in_channels"]))
        model.load_state_dict(cached["state_dict"])
        return HealthyEncoderFeatures(model, key, checksum, settings)
    model = fit_healthy_encoder(images_train, **settings)
    atomic_torch_save(
        {
            "format": CACHE_FORMAT,
            "state_dict": model.state_dict(),
            "settings": settings,
            "checksum": checksum,
            "in_channels": model.in_channels,
        },
        file,
    )
    return HealthyEncoderFeatures(model, key, checksum, settings)


