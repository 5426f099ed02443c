"""LPIPS (Zhang et al., CVPR 2018) with weights read from a local file only; nothing is ever downloaded.

LPIPS compares two images through a frozen ImageNet backbone: at several layers the features of both images are
unit-normalised over channels, their squared difference is weighted per channel by a learned non-negative 1x1
convolution (the "lin" layer, no bias) and averaged over space; the distance is the sum over layers. With
``spatial=True`` each layer's [B,1,h,w] map is instead upsampled bilinearly (``align_corners=False``) to the input
size and the layers are summed into a [B,1,H,W] map, as the official ``lpips`` package does. Bilinear upsampling
weights border pixels of a layer map slightly differently from interior ones when the map is not an integer fraction
of the input size, so the spatial mean of that map is close to, not exactly, the distance (1e-4 relative on 64 x 64
noise images; more when a layer's map is concentrated at its borders).

Inputs: [B,3,H,W] images in [-1, 1] (or in [0, 1] with ``normalize=True``); the backbones are RGB networks, so
grayscale [B,1,H,W] inputs are repeated to 3 channels. Before the backbone the official ScalingLayer maps the
[-1, 1] input to ImageNet statistics: ``(x - shift) / scale`` with shift (-.030, -.088, -.188) and scale
(.458, .448, .450).

Backbones (re-implemented here with torchvision's layer indices, so its state dicts load unchanged):

* ``squeeze``: SqueezeNet 1.1 ``features``, 7 taps with channels 64, 128, 256, 384, 384, 512, 512;
* ``alex``: AlexNet ``features`` (up to the last ReLU), 5 taps with channels 64, 192, 384, 256, 256.

Weights on an offline machine
-----------------------------
:func:`load_lpips` reads one file, ``lpips_<backbone>.pth`` (``lpips_squeeze.pth`` or ``lpips_alex.pth``), from the
folder named by the environment variable ``NORMBENCH_LPIPS_DIR`` (or from the ``path`` argument: that file or a
folder holding it). The file is a single torch state dict: the backbone under ``net.`` with torchvision's key names
(``net.features.0.weight``, ``net.features.3.squeeze.weight``, ...) and the lin layers as ``lin<k>.weight``
([1, C, 1, 1]). To make it, fetch on any machine with network access

1. torchvision's ImageNet backbone weights: ``https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth``
   (older torchvision releases: ``squeezenet1_1-f364aa15.pth``) or ``.../alexnet-owt-7be5be79.pth``
   (older: ``alexnet-owt-4df8aa71.pth``), and
2. the official LPIPS v0.1 lin weights ``lpips/weights/v0.1/squeeze.pth`` (or ``alex.pth``) from the ``lpips``
   package / github.com/richzhang/PerceptualSimilarity (keys ``lin<k>.model.1.weight``),

then run ``save_lpips_weights("squeezenet1_1-b8a52dc0.pth", "squeeze.pth", "squeeze", "/some/folder")`` (no network
needed; this module imports neither torchvision nor lpips) and copy ``/some/folder/lpips_squeeze.pth`` into
``$NORMBENCH_LPIPS_DIR`` on the offline machine. Without that file :func:`load_lpips` returns ``(None, reason)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmark.io import atomic_torch_save

ENV_VAR = "NORMBENCH_LPIPS_DIR"
BACKBONES = ("squeeze", "alex")
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # added to the channel norm, as in the official implementation

# SqueezeNet 1.1 Fire modules: features index -> (in, squeeze, expand1x1, expand3x3)
SQUEEZE_FIRES = {
    3: (64, 16, 64, 64),
    4: (128, 16, 64, 64),
    6: (128, 32, 128, 128),
    7: (256, 32, 128, 128),
    9: (256, 48, 192, 192),
    10: (384, 48, 192, 192),
    11: (384, 64, 256, 256),
    12: (512, 64, 256, 256),
}
# features indices after which LPIPS takes a tap (exclusive slice ends) and the channels there
TAPS = {"squeeze": (2, 5, 8, 10, 11, 12, 13), "alex": (2, 5, 8, 10, 12)}
CHANNELS = {"squeeze": (64, 128, 256, 384, 384, 512, 512), "alex": (64, 192, 384, 256, 256)}


class Fire(nn.Module):
    """SqueezeNet Fire module: 1x1 squeeze, then concatenated 1x1 and 3x3 expansions (all followed by ReLU)."""

    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        s = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1x1(s)), F.relu(self.expand3x3(s))], dim=1)


def _squeeze_layers() -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, kernel_size=3, stride=2), nn.ReLU()]
    for index in range(2, 13):
        if index in SQUEEZE_FIRES:
            layers.append(Fire(*SQUEEZE_FIRES[index]))
        else:
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True))
    return layers


def _alex_layers() -> list[nn.Module]:
    return [
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(),
    ]


class Backbone(nn.Module):
    """torchvision-indexed ``features`` stack returning the LPIPS taps."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        _check_backbone(backbone)
        self.features = nn.Sequential(*(_squeeze_layers() if backbone == "squeeze" else _alex_layers()))
        self.taps = TAPS[backbone]

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs, start = [], 0
        for stop in self.taps:
            for layer in self.features[start:stop]:
                x = layer(x)
            outputs.append(x)
            start = stop
        return outputs


def _check_backbone(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ValueError(f"unknown LPIPS backbone {backbone!r}; expected one of {BACKBONES}")


def unit_normalise(features: Tensor) -> Tensor:
    """Divide every feature vector by its L2 norm over channels (plus ``EPS``)."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)


class LPIPS(nn.Module):
    """LPIPS distance with the given backbone; weights come from :func:`load_lpips`, never from the network."""

    def __init__(self, backbone: str = "squeeze") -> None:
        super().__init__()
        _check_backbone(backbone)
        self.backbone = backbone
        self.net = Backbone(backbone)
        for k, channels in enumerate(CHANNELS[backbone]):
            setattr(self, f"lin{k}", nn.Conv2d(channels, 1, kernel_size=1, bias=False))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    @property
    def lins(self) -> list[nn.Conv2d]:
        """The lin layers in tap order."""
        return [getattr(self, f"lin{k}") for k in range(len(CHANNELS[self.backbone]))]

    def _prepare(self, images: Tensor, normalize: bool) -> Tensor:
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS expects [B,1,H,W] or [B,3,H,W] images, got shape {tuple(images.shape)}")
        images = images.to(self.shift.dtype)
        if normalize:
            images = 2 * images - 1
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return (images - self.shift) / self.scale

    def layer_maps(self, x: Tensor, y: Tensor, normalize: bool = False) -> list[Tensor]:
        """Per-layer weighted squared differences of the unit-normalised features, each [B,1,h_k,w_k]."""
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        features_x = self.net(self._prepare(x, normalize))
        features_y = self.net(self._prepare(y, normalize))
        return [
            lin((unit_normalise(fx) - unit_normalise(fy)).pow(2))
            for lin, fx, fy in zip(self.lins, features_x, features_y, strict=True)
        ]

    def forward(self, x: Tensor, y: Tensor, normalize: bool = False, spatial: bool = False) -> Tensor:
        """Distance [B] (sum over layers of the spatial means), or with ``spatial`` the [B,1,H,W] map."""
        maps = self.layer_maps(x, y, normalize)
        if spatial:
            size = x.shape[-2:]
            return sum(F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps)
        return sum(m.mean(dim=(1, 2, 3)) for m in maps)


def _weights_file(backbone: str, path: str | os.PathLike | None) -> tuple[Path | None, str]:
    """The weights file to read (or None) and where it was looked for."""
    filename = f"lpips_{backbone}.pth"
    if path is None:
        folder = os.environ.get(ENV_VAR)
        if not folder:
            return None, f"no LPIPS weights: {ENV_VAR} is not set (it should name a folder holding {filename})"
        candidate, origin = Path(folder) / filename, f"{ENV_VAR}={folder}"
    else:
        candidate, origin = Path(path), f"path={path}"
        if candidate.is_dir():
            candidate = candidate / filename
    if not candidate.is_file():
        return None, (
            f"no LPIPS weights: {candidate} not found ({origin}); place {filename} in the folder named by {ENV_VAR} "
            "(see benchmark.metrics.perceptual for how to make it)"
        )
    return candidate, origin


def load_lpips(backbone: str = "squeeze", path: str | os.PathLike | None = None) -> tuple[LPIPS | None, str | None]:
    """LPIPS in eval mode with frozen weights from ``path`` (file or folder) or ``$NORMBENCH_LPIPS_DIR``.

    Returns ``(model, None)``, or ``(None, reason)`` when no weights file is found. A file that is found but does
    not hold this backbone's state dict raises (a wrong file should not silently disable a metric).
    """
    _check_backbone(backbone)
    file, origin = _weights_file(backbone, path)
    if file is None:
        return None, origin
    state = torch.load(file, map_location="cpu", weights_only=True)
    model = LPIPS(backbone)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{file} is not an LPIPS-{backbone} state dict: {error}") from error
    if any(bool((lin.weight < 0).any()) for lin in model.lins):
        raise ValueError(f"{file}: LPIPS lin weights must be non-negative")
    model.eval().requires_grad_(False)
    return model, None


def convert_official_weights(
    torchvision_state: Mapping[str, Tensor], lpips_state: Mapping[str, Tensor], backbone: str
) -> dict[str, Tensor]:
    """The ``lpips_<backbone>.pth`` state dict from torchvision's backbone weights and the official lin weights.

    ``torchvision_state``: ``features.<i>...`` keys (classifier keys are dropped); ``lpips_state``: the official
    release's ``lin<k>.model.1.weight`` keys. Raises ``KeyError`` for missing keys and ``ValueError`` for shapes
    that do not fit the backbone.
    """
    _check_backbone(backbone)
    target = LPIPS(backbone).state_dict()
    converted: dict[str, Tensor] = {}
    for key in target:
        if key.startswith("net."):
            source_key, source = key[len("net.") :], torchvision_state
        else:
            source_key, source = key.replace(".weight", ".model.1.weight"), lpips_state
        if source_key not in source:
            raise KeyError(
                f"{source_key} missing from the {'torchvision' if source is torchvision_state else 'LPIPS'}"
                f" state dict (backbone {backbone!r})"
            )
        tensor = source[source_key]
        if tuple(tensor.shape) != tuple(target[key].shape):
            raise ValueError(f"{source_key} has shape {tuple(tensor.shape)}, expected {tuple(target[key].shape)}")
        converted[key] = tensor.detach().to("cpu", torch.float32).clone()
    return converted


def save_lpips_weights(
    torchvision_weights: str | os.PathLike | Mapping[str, Tensor],
    lpips_weights: str | os.PathLike | Mapping[str, Tensor],
    backbone: str,
    out_dir: str | os.PathLike,
) -> Path:
    """Convert (files or state dicts) with :func:`convert_official_weights` and write ``out_dir/lpips_<backbone>.pth``.

    The file is written atomically (temporary file + ``os.replace``); returns its path.
    """

    def read(source: str | os.PathLike | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        return source if isinstance(source, Mapping) else torch.load(source, map_location="cpu", weights_only=True)

    state = convert_official_weights(read(torchvision_weights), read(lpips_weights), backbone)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"lpips_{backbone}.pth"
    atomic_torch_save(state, target)
    return target
