"""ASC-Net's NumPy files (``ascnet_npy``): loading, splits, the batch contract and clear errors for bad files."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.ascnet_npy import ASCNET_FILES, AscNetNpyDataModule, read_npy
from datamodules.base import BATCH_KEYS, HEALTHY_TEST_SET
from datamodules.errors import DataError

N_REF, N_INPUT, SIZE = 12, 10, 16
LESIONED = (0, 2, 4, 6, 8)  # input images with a bright 4x4 square
SQUARE = 4


def make_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Reference and input images N x 16 x 16 x 1 in [0, 1]: noisy tissue (0.2..0.6) in rows / columns 2..13 on a
    zero background; lesioned inputs carry a bright square (1.0) at an image-dependent place, and its mask."""
    rng = np.random.default_rng(seed)

    def tissue(n: int) -> np.ndarray:
        images = np.zeros((n, SIZE, SIZE, 1), dtype=np.float32)
        images[:, 2:14, 2:14, 0] = rng.uniform(0.2, 0.6, size=(n, 12, 12))
        return images

    reference, inputs = tissue(N_REF), tissue(N_INPUT)
    masks = np.zeros((N_INPUT, SIZE, SIZE, 1), dtype=np.uint8)
    for i in LESIONED:
        r, c = 3 + i % 5, 4 + (i // 2) % 4
        masks[i, r:r + SQUARE, c:c + SQUARE] = 1
    inputs[masks > 0] = 1.0
    return {"reference": reference, "input": inputs, "mask": masks}


def write_arrays(root: Path, arrays: dict[str, np.ndarray]) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, array in arrays.items():
        paths[role] = root / ASCNET_FILES[role]
        np.save(paths[role], array)
    return paths


@pytest.fixture
def ascnet(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, Path]]:
    arrays = make_arrays()
    root = tmp_path / "ascnet"
    return root, arrays, write_arrays(root, arrays)


def _setup(root: Path, **kwargs) -> AscNetNpyDataModule:
    dm = AscNetNpyDataModule(root=str(root), batch_size=4, **kwargs)
    dm.prepare_data()
    dm.setup()
    return dm


def channels_first(array: np.ndarray) -> np.ndarray:
    return np.moveaxis(array, -1, 1)


# ------------------------------------------------------------------------------------------------- loading, splits
def test_loading_round_trips_and_masks_align(ascnet) -> None:
    root, raw, _ = ascnet
    dm = _setup(root)
    s = dm.splits
    assert dm.test_set_names == [HEALTHY_TEST_SET, "input"] and dm.image_shape == (1, SIZE, SIZE)
    reference, inputs, masks = (channels_first(raw[k]) for k in ("reference", "input", "mask"))

    healthy_parts = (s.train, s.val, s.tests[HEALTHY_TEST_SET])
    ref_index = np.concatenate([p.slices for p in healthy_parts])
    assert sorted(ref_index.tolist()) == list(range(N_REF))  # a partition of the reference set
    for part in healthy_parts:
        assert part.images.dtype == np.float32 and part.images.shape[1:] == (1, SIZE, SIZE)
        np.testing.assert_array_equal(part.images, reference[part.slices])  # exact: floats in [0, 1] kept
        assert [f"ascnet_npy/reference/{i}" for i in part.slices] == part.subjects.tolist()
        assert not part.masks.any() and (part.labels == 0).all()
        np.testing.assert_array_equal(part.rois, (reference[part.slices] > 0).astype(np.uint8))  # foreground roi

    test, pool = s.tests["input"], s.unlabelled
    assert pool is not None
    assert sorted(np.concatenate([test.slices, pool.slices]).tolist()) == list(range(N_INPUT))
    np.testing.assert_array_equal(test.images, inputs[test.slices])
    np.testing.assert_array_equal(test.masks, masks[test.slices])
    assert test.labels.tolist() == [int(i in LESIONED) for i in test.slices]
    assert 0 < test.labels.sum() < len(test)  # the seed-0 split has lesioned and lesion-free test images
    for k in range(len(test)):  # the bright square lies exactly under the mask, and inside the roi
        image, mask, roi = test.images[k, 0], test.masks[k, 0] > 0, test.rois[k, 0] > 0
        assert (image[mask] == 1.0).all() and (image[~mask] < 1.0).all()
        assert roi[mask].all()
    np.testing.assert_array_equal(pool.images, inputs[pool.slices])
    assert not pool.masks.any() and (pool.labels == 0).all()  # the pool's masks are never exposed
    assert all(s.startswith("ascnet_npy/input/") for s in pool.subjects)


def test_splits_are_disjoint_sized_and_deterministic(ascnet) -> None:
    root, _, _ = ascnet
    s = _setup(root).splits
    sizes = [len(s.tests[HEALTHY_TEST_SET]), len(s.val), len(s.train), len(s.tests["input"]), len(s.unlabelled)]
    assert sizes == [round(0.2 * 12), round(0.1 * 10), 9, 5, 5]
    subjects = [set(p.subjects.tolist()) for p in (s.train, s.val, *s.tests.values(), s.unlabelled)]
    assert sum(len(x) for x in subjects) == len(set().union(*subjects)) == N_REF + N_INPUT

    def ids(dm: AscNetNpyDataModule) -> dict[str, list[int]]:
        sp = dm.splits
        return {"train": sp.train.slices.tolist(), "val": sp.val.slices.tolist(),
                "healthy": sp.tests[HEALTHY_TEST_SET].slices.tolist(), "input": sp.tests["input"].slices.tolist()}

    same, other = _setup(root, seed=0), _setup(root, seed=1)
    assert ids(same) == ids(_setup(root))
    assert ids(other) != ids(same)
    assert ids(other)["input"] != ids(same)["input"] and ids(other)["healthy"] != ids(same)["healthy"]
    more_tests = ids(_setup(root, test_fraction=0.8))  # independent random streams: reference splits unchanged
    assert len(more_tests["input"]) == 8
    assert {k: v for k, v in more_tests.items() if k != "input"} == {k: v for k, v in ids(same).items() if k != "input"}


def test_batches_follow_the_contract(ascnet) -> None:
    root, _, _ = ascnet
    dm = _setup(root)
    torch.manual_seed(0)  # the train samplers derive their seed from it
    loaders = {"train": dm.train_dataloader(), "val": dm.val_dataloader(), "unlabelled": dm.unlabelled_dataloader(),
               **dict(zip(dm.test_set_names, dm.test_dataloader(), strict=True))}
    seen_lesion = False
    for name, loader in loaders.items():
        count = 0
        for batch in loader:
            b = len(batch["subject"])
            assert set(batch) == set(BATCH_KEYS), name
            assert batch["image"].dtype == torch.float32 and batch["image"].shape == (b, 1, SIZE, SIZE)
            for key in ("mask", "roi"):
                assert batch[key].dtype == torch.float32 and batch[key].shape == (b, 1, SIZE, SIZE)
                assert set(batch[key].unique().tolist()) <= {0.0, 1.0}
            assert batch["image"].min() >= 0 and batch["image"].max() <= 1
            assert batch["label"].dtype == torch.int64 and batch["slice"].dtype == torch.int64
            assert all(isinstance(x, str) for x in batch["subject"])
            seen_lesion |= bool(batch["label"].any())
            assert name == "input" or not batch["mask"].any()
            count += b
        assert count == len(loader.dataset), name
    assert seen_lesion


def test_uint8_images_are_scaled_and_resizing(tmp_path: Path) -> None:
    raw = make_arrays()
    raw["reference"] = np.round(raw["reference"] * 255).astype(np.uint8)
    write_arrays(tmp_path, raw)
    s = _setup(tmp_path).splits
    np.testing.assert_allclose(s.train.images, channels_first(raw["reference"])[s.train.slices] / 255.0, atol=1e-7)

    s = _setup(tmp_path, image_size=32).splits  # 2x: bilinear images, nearest masks and roi
    test = s.tests["input"]
    assert test.images.shape[1:] == (1, 32, 32) and s.unlabelled.images.shape[1:] == (1, 32, 32)
    assert test.images.dtype == np.float32 and test.images.min() >= 0 and test.images.max() <= 1
    twice = channels_first(raw["mask"])[test.slices].repeat(2, axis=2).repeat(2, axis=3)
    np.testing.assert_array_equal(test.masks, twice)
    roi = channels_first(raw["reference"])[s.train.slices].repeat(2, axis=2).repeat(2, axis=3) > 0
    np.testing.assert_array_equal(s.train.rois, roi)
    assert test.labels.tolist() == [int(i in LESIONED) for i in test.slices]


def test_foreground_threshold_and_min_lesion_pixels(ascnet) -> None:
    root, raw, _ = ascnet
    s = _setup(root, foreground_threshold=0.4, min_lesion_pixels=SQUARE * SQUARE + 1).splits
    np.testing.assert_array_equal(s.val.rois, (channels_first(raw["reference"])[s.val.slices] > 0.4))
    assert not s.tests["input"].labels.any()  # every square has 16 pixels < 17
    assert s.tests["input"].masks.any()  # the pixels are still annotated


def test_all_inputs_tested_or_no_masks(ascnet) -> None:
    root, _, paths = ascnet
    dm = _setup(root, test_fraction=1.0, test_set_name="lesion")
    assert dm.splits.unlabelled is None and dm.test_set_names == [HEALTHY_TEST_SET, "lesion"]
    assert len(dm.splits.tests["lesion"]) == N_INPUT
    with pytest.raises(DataError, match="no unlabelled pool"):
        dm.unlabelled_dataloader()

    paths["mask"].unlink()
    dm = _setup(root, mask_file=None)
    assert dm.test_set_names == [HEALTHY_TEST_SET]
    assert dm.splits.unlabelled.slices.tolist() == list(range(N_INPUT))
    assert next(iter(dm.unlabelled_dataloader()))["image"].shape == (4, 1, SIZE, SIZE)


# -------------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("role", ["reference", "input"])
def test_missing_file_lists_the_expected_names(ascnet, role: str) -> None:
    root, _, paths = ascnet
    paths[role].unlink()
    dm = AscNetNpyDataModule(root=str(root))  # constructing does not touch the disk
    with pytest.raises(DataError, match=re.escape(f"file not found: {paths[role]}")) as info:
        dm.prepare_data()
    message = str(info.value)
    assert all(name in message for name in ASCNET_FILES.values())
    assert "datasets.ascnet_npy.root=" in message


def test_missing_mask_file_explains_what_to_do(ascnet) -> None:
    root, _, paths = ascnet
    paths["mask"].unlink()
    with pytest.raises(DataError, match=re.escape(str(paths["mask"])) + r".*needed to evaluate.*mask_file=null"):
        _setup(root)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "absent" / ASCNET_FILES["reference"]))):
        AscNetNpyDataModule(root=str(tmp_path / "absent")).prepare_data()


def _bad_files() -> list:
    def replace(array: np.ndarray, index: tuple, value: float) -> np.ndarray:
        array = array.astype(np.float32)
        array[index] = value
        return array

    ref_mask_shape = "(12, 16, 16, 1)"
    cases = [  # (role, content from the good arrays, pattern)
        ("reference", lambda a: a[..., 0], r"3-D.*np\.newaxis"),
        ("reference", lambda a: a[None], r"5-D; expected a 4-D array N x H x W x 1"),
        ("reference", channels_first, r"looks channels-first \(N x 1 x H x W\).*np\.moveaxis\(a, 1, -1\)"),
        ("input", lambda a: np.repeat(a, 3, axis=-1), r"last axis has 3 channels"),
        ("reference", lambda a: a[:, :, :12], r"images of 16 x 12 pixels.*square"),
        ("input", lambda a: a[:0], r"is empty: shape \(0, 16, 16, 1\)"),
        ("reference", lambda a: replace(a, (3, 5, 5, 0), np.nan), r"1 NaN and 0 Inf value\(s\), e\.g\. in image 3"),
        ("input", lambda a: replace(a, (2, 5, 5, 0), -np.inf), r"0 NaN and 1 Inf value\(s\)"),
        ("input", lambda a: replace(replace(a, (1, 3, 3, 0), 1.5), (0, 4, 4, 0), -0.25),
         r"values in \[-0\.25, 1\.5\], outside \[0, 1\]"),
        ("reference", lambda a: np.round(a * 255).astype(np.int64), r"dtype int64.*floats in \[0, 1\] or uint8"),
        ("input", lambda a: a > 0.5, r"dtype bool"),
        ("input", lambda a: np.pad(a, ((0, 0), (2, 2), (2, 2), (0, 0))),
         r"16 x 16 pixels.*input_for_generator\.npy of 20 x 20.*same image size"),
        ("mask", lambda a: a[:9], r"has shape \(9, 16, 16, 1\), the input set .* has shape \(10, 16, 16, 1\)"),
        ("mask", lambda a: np.concatenate([a, a[:2]]), r"has shape " + re.escape(ref_mask_shape)),
        ("mask", lambda a: replace(replace(a, (0, 0, 0, 0), 2), (1, 0, 0, 0), 0.5), r"not binary.*\[0\.5, 2\.0\]"),
        ("mask", lambda a: replace(a, (1, 0, 0, 0), np.nan), r"not binary.*nan"),
        ("mask", channels_first, r"looks channels-first"),
    ]
    return [pytest.param(*case, id=f"{case[0]}-{i}") for i, case in enumerate(cases)]


@pytest.mark.parametrize(("role", "content", "pattern"), _bad_files())
def test_bad_arrays_name_the_file(ascnet, role: str, content, pattern: str) -> None:
    root, raw, paths = ascnet
    np.save(paths[role], content(raw[role]))
    with pytest.raises(DataError, match=pattern) as info:
        _setup(root)
    assert str(paths[role]) in str(info.value)


@pytest.mark.parametrize(("write", "pattern"), [  # write(binary file handle)
    (lambda f: np.savez(f, images=np.zeros((2, 4, 4, 1))), r"\.npz archive.*np\.save"),
    (lambda f: f.write(b"1,2,3\n"), r"not a \.npy file: it starts with bytes 31 2c"),
    (lambda f: pickle.dump(np.zeros((2, 4, 4, 1)), f), r"not a \.npy file \(it looks like a pickle\)"),
    (lambda f: np.save(f, np.array([{"image": 1}], dtype=object), allow_pickle=True), r"object array.*allow_pickle"),
    (lambda f: None, r"not a \.npy file: it starts with bytes \(none\)"),
], ids=["npz", "text", "pickle", "object-array", "empty-file"])
def test_unreadable_files_name_the_file(ascnet, write, pattern: str) -> None:
    root, _, paths = ascnet
    with paths["reference"].open("wb") as handle:  # a handle: np.save / np.savez add no suffix to it
        write(handle)
    with pytest.raises(DataError, match=pattern) as info:
        _setup(root)
    assert str(paths["reference"]) in str(info.value)


def test_truncated_npy(ascnet) -> None:
    root, _, paths = ascnet
    content = paths["input"].read_bytes()
    paths["input"].write_bytes(content[:-40])
    with pytest.raises(DataError, match=re.escape(str(paths["input"])) + r": truncated or corrupt \.npy"):
        _setup(root)
    paths["input"].write_bytes(content[:20])  # inside the header
    with pytest.raises(DataError, match=re.escape(str(paths["input"])) + r": truncated or corrupt"):
        read_npy(paths["input"])


@pytest.mark.parametrize(("kwargs", "role", "pattern"), [
    ({"healthy_test_fraction": 0.01}, "reference", r"'test/healthy' no image \(test/healthy 0, val 1, train 11"),
    ({"val_fraction": 0.99}, "reference", r"'train' no image"),
    ({"test_fraction": 0.01}, "input", r"'test/input' no image \(test/input 0, unlabelled 10; test_fraction 0\.01"),
    ({"test_fraction": 0.99}, "input", r"'unlabelled' no image"),
])
def test_empty_split_is_an_error(ascnet, kwargs: dict, role: str, pattern: str) -> None:
    root, _, paths = ascnet
    with pytest.raises(DataError, match=re.escape(str(paths[role])) + r": its \d+ image\(s\) give.*" + pattern):
        _setup(root, **kwargs)


def test_tiny_reference_file_and_black_images(ascnet) -> None:
    root, raw, paths = ascnet
    np.save(paths["reference"], raw["reference"][:2])
    with pytest.raises(DataError, match=r"its 2 image\(s\) give the split\(s\) 'test/healthy', 'val' no image"):
        _setup(root)
    np.save(paths["reference"], np.zeros_like(raw["reference"]))
    with pytest.raises(DataError, match=re.escape(str(paths["reference"])) + r": split '.*' has no foreground"):
        _setup(root)


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"root": ""}, r"root must be the path"),
    ({"input_file": ""}, r"input_file must be a file name"),
    ({"reference_file": None}, r"reference_file must be a file name"),
    ({"image_size": 4}, r"image_size must be an integer >= 8"),
    ({"healthy_test_fraction": 0.0}, r"healthy_test_fraction must be a number strictly between 0 and 1"),
    ({"val_fraction": 1.0}, r"val_fraction must be"),
    ({"test_fraction": 0}, r"test_fraction must be a number in \(0, 1\]"),
    ({"test_fraction": 1.5}, r"test_fraction must be"),
    ({"test_set_name": "healthy"}, r"test_set_name must be .* other than 'healthy'"),
    ({"test_set_name": "a/b"}, r"test_set_name must be"),
    ({"foreground_threshold": 1.0}, r"foreground_threshold must be a number in \[0, 1\)"),
    ({"min_lesion_pixels": 0}, r"min_lesion_pixels must be an integer >= 1"),
    ({"seed": -1}, r"seed must be a non-negative integer"),
])
def test_bad_arguments(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        AscNetNpyDataModule(**{"root": "data/ascnet_npy", **kwargs})


# ---------------------------------------------------------------------------------------------------------- config
def test_config_validates_without_the_files(ascnet) -> None:
    from benchmark.config import ComponentConfig, available, load_component

    assert "ascnet_npy" in available("datasets")
    config = load_component("datasets", "ascnet_npy")  # type-checks every key; reads no data
    args = config.init_args
    assert args["root"] == "data/ascnet_npy"
    assert {role: args[f"{role}_file"] for role in ASCNET_FILES} == ASCNET_FILES
    dm = config.instantiate()
    assert dm.image_size is None and dm.mask_file == ASCNET_FILES["mask"]
    root, _, _ = ascnet
    dm = ComponentConfig("ascnet_npy", config.class_path, {**args, "root": str(root)}).instantiate()
    dm.prepare_data()
    assert dm.image_shape == (1, SIZE, SIZE) and dm.test_set_names == [HEALTHY_TEST_SET, "input"]
