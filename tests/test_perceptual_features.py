"""LPIPS from local weights and the Frechet feature extractors, all offline with locally built weights."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.metrics import features
from benchmark.metrics.features import (
    FeatureExtractor,
    fit_healthy_encoder,
    healthy_encoder_features,
    load_inception,
)
from benchmark.metrics.perceptual import LPIPS, convert_official_weights, load_lpips, save_lpips_weights

# ---------------------------------------------------------------------------------------------------------------
# Architecture description, written independently of the module under test
# ---------------------------------------------------------------------------------------------------------------

# features index -> (in, squeeze, expand1x1, expand3x3) of SqueezeNet 1.1
FIRES = {
    3: (64, 16, 64, 64),
    4: (128, 16, 64, 64),
    6: (128, 32, 128, 128),
    7: (256, 32, 128, 128),
    9: (256, 48, 192, 192),
    10: (384, 48, 192, 192),
    11: (384, 64, 256, 256),
    12: (512, 64, 256, 256),
}
# features index -> (out, in, kernel, stride, padding) of AlexNet's convolutions
ALEX_CONVS = {
    0: (64, 3, 11, 4, 2),
    3: (192, 64, 5, 1, 2),
    6: (384, 192, 3, 1, 1),
    8: (256, 384, 3, 1, 1),
    10: (256, 256, 3, 1, 1),
}
LIN_CHANNELS = {"squeeze": [64, 128, 256, 384, 384, 512, 512], "alex": [64, 192, 384, 256, 256]}


def torchvision_shapes(backbone: str) -> dict[str, tuple[int, ...]]:
    """torchvision's ``features.*`` parameter shapes, from the architecture description."""
    shapes: dict[str, tuple[int, ...]] = {}
    if backbone == "squeeze":
        shapes["features.0.weight"], shapes["features.0.bias"] = (64, 3, 3, 3), (64,)
        for i, (c_in, s, e1, e3) in FIRES.items():
            for name, shape in (
                ("squeeze", (s, c_in, 1, 1)),
                ("expand1x1", (e1, s, 1, 1)),
                ("expand3x3", (e3, s, 3, 3)),
            ):
                shapes[f"features.{i}.{name}.weight"], shapes[f"features.{i}.{name}.bias"] = shape, shape[:1]
    else:
        for i, (c_out, c_in, k, _, _) in ALEX_CONVS.items():
            shapes[f"features.{i}.weight"], shapes[f"features.{i}.bias"] = (c_out, c_in, k, k), (c_out,)
    return shapes


def random_lpips_state(backbone: str, seed: int = 0) -> dict[str, Tensor]:
    """A file-format state dict with seeded random weights (He-scaled convs, non-negative lins)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in torchvision_shapes(backbone).items():
        if key.endswith("weight"):
            fan_in = math.prod(shape[1:])
            state[f"net.{key}"] = torch.randn(shape, generator=generator) * math.sqrt(2 / fan_in)
        else:
            state[f"net.{key}"] = 0.01 * torch.randn(shape, generator=generator)
    for k, channels in enumerate(LIN_CHANNELS[backbone]):
        state[f"lin{k}.weight"] = torch.rand((1, channels, 1, 1), generator=generator)
    return state


def reference_layer_maps(state: dict[str, Tensor], backbone: str, x: Tensor, y: Tensor) -> list[Tensor]:
    """LPIPS layer maps recomputed with functional calls on the state dict (inputs [B,3,H,W] in [-1, 1])."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def conv(h: Tensor, i: int | str, stride: int = 1, padding: int = 0) -> Tensor:
        return F.conv2d(h, state[f"net.features.{i}.weight"], state[f"net.features.{i}.bias"], stride, padding)

    def fire(h: Tensor, i: int) -> Tensor:
        s = F.relu(conv(h, f"{i}.squeeze"))
        return torch.cat([F.relu(conv(s, f"{i}.expand1x1")), F.relu(conv(s, f"{i}.expand3x3", padding=1))], 1)

    def taps(h: Tensor) -> list[Tensor]:
        out = []
        if backbone == "alex":
            pool = lambda t: F.max_pool2d(t, 3, 2)  # noqa: E731
            h = F.relu(conv(h, 0, 4, 2))
            out.append(h)
            h = F.relu(conv(pool(h), 3, 1, 2))
            out.append(h)
            h = F.relu(conv(pool(h), 6, 1, 1))
            out.append(h)
            h = F.relu(conv(h, 8, 1, 1))
            out.append(h)
            out.append(F.relu(conv(h, 10, 1, 1)))
        else:
            pool = lambda t: F.max_pool2d(t, 3, 2, ceil_mode=True)  # noqa: E731
            h = F.relu(conv(h, 0, 2))
            out.append(h)
            h = fire(fire(pool(h), 3), 4)
            out.append(h)
            h = fire(fire(pool(h), 6), 7)
            out.append(h)
            for i in (9, 10, 11, 12):
                h = fire(pool(h) if i == 9 else h, i)
                out.append(h)
        return out

    maps = []
    for k, (fx, fy) in enumerate(zip(taps((x - shift) / scale), taps((y - shift) / scale), strict=True)):
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        maps.append(F.conv2d((nx - ny) ** 2, state[f"lin{k}.weight"]))
    return maps


@pytest.fixture
def weights_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "lpips"
    folder.mkdir()
    for backbone in ("squeeze", "alex"):
        torch.save(random_lpips_state(backbone), folder / f"lpips_{backbone}.pth")
    return folder


def image_pair(seed: int = 1, size: int = 64, channels: int = 3) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((2, channels, size, size), generator=generator) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=generator)).clamp(-1, 1)
    return x, y


# ---------------------------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["squeeze", "alex"])
def test_torchvision_shaped_state_dict_loads_strictly(backbone: str) -> None:
    model = LPIPS(backbone)
    tv = {key: torch.zeros(shape) for key, shape in torchvision_shapes(backbone).items()}
    model.net.load_state_dict(tv, strict=True)
    assert set(model.state_dict()) == {f"net.{k}" for k in tv} | {
        f"lin{k}.weight" for k in range(len(LIN_CHANNELS[backbone]))
    }


@pytest.mark.parametrize("backbone", ["squeeze", "alex"])
def test_lpips_matches_functional_recomputation(backbone: str, weights_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("NORMBENCH_LPIPS_DIR", str(weights_dir))
    model, reason = load_lpips(backbone)
    assert reason is None and model is not None
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    state = torch.load(weights_dir / f"lpips_{backbone}.pth", weights_only=True)
    x, y = image_pair()
    with torch.no_grad():
        distance = model(x, y)
        spatial = model(x, y, spatial=True)
        maps = reference_layer_maps(state, backbone, x, y)
    expected = sum(m.mean(dim=(1, 2, 3)) for m in maps)
    assert distance.shape == (2,)
    assert float(distance.min()) > 0
    torch.testing.assert_close(distance, expected, rtol=1e-5, atol=1e-6)
    # (c) the spatial map: the sum of the bilinearly upsampled layer maps; its mean is the distance up to the
    # upsampling's edge weighting (exact only when every layer map is an integer fraction of the input size)
    expected_map = sum(F.interpolate(m, size=(64, 64), mode="bilinear", align_corners=False) for m in maps)
    assert spatial.shape == (2, 1, 64, 64)
    torch.testing.assert_close(spatial, expected_map, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(spatial.mean(dim=(1, 2, 3)), distance, rtol=1e-3, atol=0)


def test_lpips_identity_grayscale_and_normalize(weights_dir: Path) -> None:
    model, _ = load_lpips("squeeze", path=weights_dir)
    assert model is not None
    x, y = image_pair(channels=1)
    with torch.no_grad():
        assert torch.equal(model(x, x), torch.zeros(2))
        same = model(x, x, spatial=True)
        assert torch.equal(same, torch.zeros_like(same))
        spatial = model(x, y, spatial=True)
        assert spatial.shape == (2, 1, 64, 64) and float(spatial.min()) >= 0
        gray = model(x, y)
        torch.testing.assert_close(gray, model(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)))
        torch.testing.assert_close(model((x + 1) / 2, (y + 1) / 2, normalize=True), gray, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        model(x, y[:1])
    with pytest.raises(ValueError, match="LPIPS expects"):
        model(x.repeat(1, 2, 1, 1), y.repeat(1, 2, 1, 1))


def test_load_lpips_from_file_path_and_env_priority(weights_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NORMBENCH_LPIPS_DIR", str(tmp_path / "elsewhere"))
    model, reason = load_lpips("alex", path=weights_dir / "lpips_alex.pth")
    assert model is not None and reason is None and model.backbone == "alex"
    model, reason = load_lpips("alex")
    assert model is None and "NORMBENCH_LPIPS_DIR" in reason


def test_missing_weights_give_reason(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("NORMBENCH_LPIPS_DIR", raising=False)
    model, reason = load_lpips("squeeze")
    assert model is None and "NORMBENCH_LPIPS_DIR" in reason
    model, reason = load_lpips("squeeze", path=tmp_path)
    assert model is None and "NORMBENCH_LPIPS_DIR" in reason and "lpips_squeeze.pth" in reason
    with pytest.raises(ValueError, match="unknown LPIPS backbone"):
        load_lpips("vgg", path=tmp_path)


def test_wrong_weights_file_raises(tmp_path: Path) -> None:
    torch.save(random_lpips_state("alex"), tmp_path / "lpips_squeeze.pth")
    with pytest.raises(ValueError, match="not an LPIPS-squeeze state dict"):
        load_lpips("squeeze", path=tmp_path)
    state = random_lpips_state("alex")
    state["lin0.weight"] = -state["lin0.weight"]
    torch.save(state, tmp_path / "lpips_alex.pth")
    with pytest.raises(ValueError, match="non-negative"):
        load_lpips("alex", path=tmp_path)


@pytest.mark.parametrize("backbone", ["squeeze", "alex"])
def test_convert_official_weights(backbone: str, tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(3)
    tv = {key: torch.randn(shape, generator=generator) for key, shape in torchvision_shapes(backbone).items()}
    tv["classifier.1.weight"] = torch.randn(10, 4, generator=generator)  # dropped: not part of LPIPS
    official = {
        f"lin{k}.model.1.weight": torch.rand((1, c, 1, 1), generator=generator)
        for k, c in enumerate(LIN_CHANNELS[backbone])
    }
    converted = convert_official_weights(tv, official, backbone)
    expected_keys = {f"net.{k}" for k in tv if k.startswith("features.")} | {
        f"lin{k}.weight" for k in range(len(LIN_CHANNELS[backbone]))
    }
    assert set(converted) == expected_keys
    for key in tv:
        if key.startswith("features."):
            assert torch.equal(converted[f"net.{key}"], tv[key])
    for k in range(len(LIN_CHANNELS[backbone])):
        assert torch.equal(converted[f"lin{k}.weight"], official[f"lin{k}.model.1.weight"])
    # round trip through files, as a user would do it
    torch.save(tv, tmp_path / "tv.pth")
    torch.save(official, tmp_path / "official.pth")
    written = save_lpips_weights(tmp_path / "tv.pth", tmp_path / "official.pth", backbone, tmp_path / "out")
    assert written == tmp_path / "out" / f"lpips_{backbone}.pth"
    assert [p.name for p in (tmp_path / "out").iterdir()] == [written.name]
    model, _ = load_lpips(backbone, path=tmp_path / "out")
    assert model is not None
    assert torch.equal(model.net.features[0].weight, tv["features.0.weight"])
    # missing or mis-shaped inputs
    with pytest.raises(KeyError, match=r"lin1\.model\.1\.weight"):
        convert_official_weights(tv, {k: v for k, v in official.items() if not k.startswith("lin1.")}, backbone)
    with pytest.raises(ValueError, match="shape"):
        convert_official_weights({**tv, "features.0.weight": torch.zeros(1)}, official, backbone)


# ---------------------------------------------------------------------------------------------------------------
# Feature extractors
# ---------------------------------------------------------------------------------------------------------------


class FakeInception(torch.nn.Module):
    """Same call signature as NVIDIA's FID Inception TorchScript; features = per-channel means of the uint8 input."""

    def forward(self, images: Tensor, return_features: bool = False) -> Tensor:
        if images.dtype != torch.uint8 or images.shape[1] != 3:
            raise RuntimeError("expected uint8 RGB images")
        means = images.float().mean(dim=(2, 3))
        if return_features:
            return means
        return means.sum(dim=1, keepdim=True)


def test_inception_from_env_var(tmp_path: Path, monkeypatch) -> None:
    file = tmp_path / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(FakeInception()), str(file))
    monkeypatch.setenv("NORMBENCH_INCEPTION_PATH", str(file))
    extractor, reason = load_inception(batch_size=2)
    assert reason is None and isinstance(extractor, FeatureExtractor)
    assert "inception" in extractor.name
    gray = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = extractor(gray)
    assert out.dtype == torch.float32 and out.shape == (5, 3)
    expected = (gray * 255).round().mean(dim=(1, 2, 3))
    torch.testing.assert_close(out, expected[:, None].expand(-1, 3))
    rgb = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(extractor(rgb), (rgb * 255).round().mean(dim=(2, 3)))


def test_inception_missing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("NORMBENCH_INCEPTION_PATH", raising=False)
    extractor, reason = load_inception()
    assert extractor is None and "NORMBENCH_INCEPTION_PATH" in reason
    monkeypatch.setenv("NORMBENCH_INCEPTION_PATH", str(tmp_path / "absent.pt"))
    extractor, reason = load_inception()
    assert extractor is None and "absent.pt" in reason and "NORMBENCH_INCEPTION_PATH" in reason


def brains(n: int, seed: int, shifted: bool = False, size: int = 32) -> Tensor:
    """Toy 'healthy' slices (a jittered bright ellipse with texture); ``shifted``: darker, with bright blobs."""
    generator = torch.Generator().manual_seed(seed)
    grid = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    centre = 0.1 * torch.randn((n, 2, 1, 1), generator=generator)
    radii = 0.6 + 0.1 * torch.rand((n, 2, 1, 1), generator=generator)
    inside = ((xx - centre[:, :1]) / radii[:, :1]) ** 2 + ((yy - centre[:, 1:]) / radii[:, 1:]) ** 2 <= 1
    texture = 0.05 * torch.randn((n, 1, size, size), generator=generator)
    images = inside.float() * (0.6 + texture)
    if shifted:
        images = images * 0.6
        blob_at = torch.randint(size // 4, 3 * size // 4, (n, 2), generator=generator)
        for i, (r, c) in enumerate(blob_at.tolist()):
            images[i, 0, r - 3 : r + 3, c - 3 : c + 3] = 1.0
    return images.clamp(0, 1)


def frechet(a: Tensor, b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets."""
    x, y = a.double().numpy(), b.double().numpy()
    mu_x, mu_y = x.mean(0), y.mean(0)
    ridge = 1e-6 * np.eye(x.shape[1])  # dead ReLU channels make the covariances singular
    cov_x, cov_y = np.cov(x, rowvar=False) + ridge, np.cov(y, rowvar=False) + ridge
    root = scipy.linalg.sqrtm(cov_x @ cov_y)
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(cov_x + cov_y - 2 * np.real(root)))


def test_fit_is_deterministic_and_leaves_global_rng() -> None:
    images = brains(64, seed=0)
    torch.manual_seed(123)
    first = fit_healthy_encoder(images, epochs=1, batch_size=16, seed=0)
    after = torch.rand(3)
    torch.manual_seed(123)
    second = fit_healthy_encoder(images, epochs=1, batch_size=16, seed=0)
    assert torch.equal(torch.rand(3), after)
    other = fit_healthy_encoder(images, epochs=1, batch_size=16, seed=1)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key])
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in first.state_dict().items())
    assert torch.equal(first.features(images), second.features(images))


def test_healthy_encoder_cache_reuse_and_retrain(tmp_path: Path, monkeypatch) -> None:
    images = brains(48, seed=0)
    calls = []
    original = features.fit_healthy_encoder

    def counting_fit(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(features, "fit_healthy_encoder", counting_fit)
    settings = {"epochs": 1, "batch_size": 16}
    extractor = healthy_encoder_features(images, tmp_path, "toy", **settings)
    assert isinstance(extractor, FeatureExtractor)
    assert extractor.name == "healthy-encoder (trained on toy, cached)"
    file = tmp_path / "healthy_encoder_toy.pt"
    assert len(calls) == 1 and file.is_file()
    feats = extractor(images)
    assert feats.shape == (48, 128) and feats.dtype == torch.float32 and not feats.requires_grad

    def no_training(*args, **kwargs):
        raise AssertionError("the cached encoder should have been reused")

    monkeypatch.setattr(features, "fit_healthy_encoder", no_training)
    reused = healthy_encoder_features(images, tmp_path, "toy", **settings)
    assert torch.equal(reused(images), feats) and reused.name == extractor.name

    monkeypatch.setattr(features, "fit_healthy_encoder", counting_fit)
    changed = images.clone()
    changed[0, 0, 0, 0] += 0.5
    old_checksum = torch.load(file, weights_only=True)["checksum"]
    healthy_encoder_features(changed, tmp_path, "toy", **settings)  # checksum mismatch: retrain and overwrite
    assert len(calls) == 2
    assert torch.load(file, weights_only=True)["checksum"] not in (old_checksum, None)
    healthy_encoder_features(changed, tmp_path, "toy", epochs=1, batch_size=16, seed=5)  # settings differ
    assert len(calls) == 3
    file.write_bytes(b"not a torch file")  # unreadable cache: retrain
    healthy_encoder_features(changed, tmp_path, "toy", epochs=1, batch_size=16, seed=5)
    assert len(calls) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [file.name]  # no temporary files left
    with pytest.raises(TypeError, match="unknown healthy-encoder settings"):
        healthy_encoder_features(changed, tmp_path, "toy", epoch=1)


def test_healthy_encoder_separates_distributions(tmp_path: Path) -> None:
    extractor = healthy_encoder_features(brains(256, seed=0), tmp_path, "toy", epochs=3, batch_size=32)
    healthy_a, healthy_b = extractor(brains(160, seed=1)), extractor(brains(160, seed=2))
    shifted = extractor(brains(160, seed=3, shifted=True))
    same, different = frechet(healthy_a, healthy_b), frechet(healthy_a, shifted)
    assert 0 <= same < different / 3
