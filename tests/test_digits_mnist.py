"""Leave-one-class-out datasets: the IDX reader / writer, MNIST / FashionMNIST from local files, sklearn digits."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.base import BATCH_KEYS
from datamodules.digits import DigitsDataModule, load_digit_arrays
from datamodules.errors import DataError
from datamodules.idx import read_idx, write_idx
from datamodules.leave_one_class_out import stratified_sample, stratified_split, to_unit_images
from datamodules.mnist import MNIST_FILES, MNISTDataModule

# ------------------------------------------------------------------------------------------------------------- IDX
DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
SHAPES = [(7,), (3, 4, 5), (2, 3, 1, 4), (0, 3)]


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_idx_round_trip(tmp_path: Path, dtype: type, compress: bool) -> None:
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    for i, shape in enumerate(SHAPES):
        if info is not None:
            array = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
        else:
            array = (rng.standard_normal(shape) * 1e3).astype(dtype)
        path = write_idx(tmp_path / f"a{i}.idx", array, compress=compress)
        assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
        back = read_idx(path)
        assert back.dtype == np.dtype(dtype) and back.dtype.isnative
        assert back.shape == shape
        np.testing.assert_array_equal(back, array)


def test_idx_layout_is_big_endian_and_gzip_detected_by_content(tmp_path: Path) -> None:
    array = np.array([[1, 258, -2]], dtype=np.int16)
    raw = write_idx(tmp_path / "x.gz", array).read_bytes()  # plain despite the .gz name
    assert raw == bytes([0, 0, 0x0B, 2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 1, 1, 2, 0xFF, 0xFE])
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), array)
    (tmp_path / "y-idx1-ubyte").write_bytes(gzip.compress(raw))  # gzipped without the suffix
    np.testing.assert_array_equal(read_idx(tmp_path / "y-idx1-ubyte"), array)


def test_write_idx_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))


def _good_idx() -> bytes:
    return bytes([0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))


@pytest.mark.parametrize(("content", "pattern"), [
    (b"\x12\x34" + _good_idx()[2:], r"not an IDX file.*12 34"),
    (_good_idx()[:-2], r"truncated IDX data.*6 bytes.*holds 4"),
    (_good_idx()[:9], r"truncated IDX header"),
    (_good_idx() + b"\x00\x01", r"2 trailing byte"),
    (bytes([0, 0, 0x0A]) + _good_idx()[3:], r"unknown IDX dtype code 0x0A"),
    (b"\x1f\x8b" + b"not gzip at all", r"corrupt gzip"),
    (gzip.compress(_good_idx())[:-6], r"corrupt gzip"),
    (gzip.compress(_good_idx()[:-1]), r"truncated IDX data.*decompressed"),
    (b"\x00", r"not an IDX file"),
])
def test_bad_idx_files_name_the_file(tmp_path: Path, content: bytes, pattern: str) -> None:
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match=pattern) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_missing_idx_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nope"))):
        read_idx(tmp_path / "nope")


# ----------------------------------------------------------------------------------------------------------- MNIST
N_TRAIN, N_TEST = 10, 6  # images per class


def _class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 uint8 images: class c has a bright horizontal band at rows 2c..2c+4 on a noisy dark background."""
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, c in enumerate(labels):
        images[i, 2 * c + 2: 2 * c + 6, 4:24] = 255
    return images


def write_fake_mnist(root: Path, n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny MNIST-like release: shuffled labels, class-dependent patterns; mixed plain and gzipped files."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), n))
        images = _class_images(labels, rng)
        image_name, label_name = MNIST_FILES[split]
        write_idx(root / (image_name + ".gz"), images, compress=True)
        write_idx(root / label_name, labels)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    # a corrupt .gz beside the plain labels file: the uncompressed one must be preferred
    (root / (MNIST_FILES["train"][1] + ".gz")).write_bytes(b"\x1f\x8bgarbage")
    return arrays


@pytest.fixture
def fake_mnist(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path / "mnist"
    return root, write_fake_mnist(root)


def _index(subject: str) -> int:
    return int(subject.rsplit("/", 1)[1])


def test_mnist_missing_folder_explains_where_to_get_the_data(tmp_path: Path) -> None:
    dm = MNISTDataModule(root=str(tmp_path / "absent"))  # constructing does not touch the disk
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert str(tmp_path / "absent") in message
    for names in MNIST_FILES.values():
        for name in names:
            assert name in message and f"{name}.gz" in message
    assert "does not download" in message
    assert "yann.lecun.com/exdb/mnist" in message and "zalandoresearch/fashion-mnist" in message
    assert "datasets.mnist.root=" in message and "configs/datasets/mnist.yaml" in message


def test_mnist_missing_file_is_named(fake_mnist) -> None:
    root, _ = fake_mnist
    (root / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing t10k-images-idx3-ubyte\[\.gz\]") as info:
        MNISTDataModule(root=str(root)).setup()
    assert "train-images-idx3-ubyte" in str(info.value)  # the full list of expected names


def test_fake_mnist_leave_one_class_out(fake_mnist) -> None:
    root, raw = fake_mnist
    held_out = 3
    dm = MNISTDataModule(root=str(root), held_out_class=held_out, batch_size=8)
    dm.prepare_data()
    dm.setup("fit")
    splits = dm.splits
    assert dm.test_set_names == ["healthy", "anomalous"]
    n_pool = 9 * N_TRAIN
    assert len(splits.val) == round(0.1 * n_pool) and len(splits.train) == n_pool - len(splits.val)
    assert len(splits.tests["healthy"]) == 9 * N_TEST and len(splits.tests["anomalous"]) == N_TEST

    def classes(arrays, source: str) -> np.ndarray:
        assert all(s.startswith(f"mnist/{source}/") for s in arrays.subjects)
        return raw[f"{source}_labels"][[_index(s) for s in arrays.subjects]]

    for name, arrays, source in (("train", splits.train, "train"), ("val", splits.val, "train"),
                                 ("healthy", splits.tests["healthy"], "t10k")):
        found = classes(arrays, source)
        assert held_out not in found, name
        assert set(found.tolist()) == set(range(10)) - {held_out}, name  # stratified: every normal class
        assert (arrays.labels == 0).all()
    anomalous = splits.tests["anomalous"]
    assert (classes(anomalous, "t10k") == held_out).all() and (anomalous.labels == 1).all()
    assert sorted(_index(s) for s in anomalous.subjects) == np.flatnonzero(raw["t10k_labels"] == held_out).tolist()

    for arrays in (splits.train, splits.val, *splits.tests.values()):
        assert arrays.images.dtype == np.float32 and arrays.images.shape[1:] == (1, 28, 28)
        assert arrays.images.min() >= 0.0 and arrays.images.max() <= 1.0
        assert not arrays.masks.any() and arrays.rois.all() and (arrays.slices == 0).all()
    # at the native size the values are exactly raw / 255
    first = splits.train.subjects[0]
    np.testing.assert_allclose(splits.train.images[0, 0], raw["train_images"][_index(first)] / 255.0, atol=1e-7)

    torch.manual_seed(0)  # the harness seeds everything before training; the train sampler derives its seed from it
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == set(BATCH_KEYS)
    assert batch["image"].shape == (8, 1, 28, 28) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == batch["roi"].shape == (8, 1, 28, 28)
    assert batch["label"].shape == (8,) and batch["label"].dtype == torch.int64
    assert len(batch["subject"]) == 8 and batch["slice"].shape == (8,)
    assert len(dm.test_dataloader()) == 2


def test_mnist_subsampling_resizing_and_determinism(fake_mnist) -> None:
    root, raw = fake_mnist
    args = dict(root=str(root), held_out_class=0, image_size=14, max_train=45, max_test_per_class=2, seed=5)
    dm = MNISTDataModule(**args)
    dm.setup()
    s = dm.splits
    assert dm.image_shape == (1, 14, 14)
    assert len(s.train) + len(s.val) == 45
    pool_classes = raw["train_labels"][[_index(x) for x in np.concatenate([s.train.subjects, s.val.subjects])]]
    assert np.bincount(pool_classes, minlength=10).tolist() == [0] + [5] * 9  # stratified subsample
    assert len(s.tests["healthy"]) == 18 and len(s.tests["anomalous"]) == 2
    assert s.train.images.min() >= 0.0 and s.train.images.max() <= 1.0
    again = MNISTDataModule(**args)
    again.setup()
    for a, b in zip((s.train, s.val, *s.tests.values()), (again.splits.train, again.splits.val,
                                                          *again.splits.tests.values()), strict=True):
        np.testing.assert_array_equal(a.subjects, b.subjects)
        np.testing.assert_array_equal(a.images, b.images)


@pytest.mark.parametrize(("field", "value", "pattern"), [
    ("train_labels", lambda a: np.where(a == 9, 10, a).astype(np.uint8), r"labels must be in 0\.\.9.*10"),
    ("train_labels", lambda a: a[:-1], r"holds 100 images but .* holds 99 labels"),
    ("train_images", lambda a: a[:, 0], r"expected 3-D uint8 images"),
    ("train_images", lambda a: a.astype(np.int16), r"expected 3-D uint8 images"),
    ("train_labels", lambda a: a.reshape(10, 10), r"expected 1-D labels"),
])
def test_mnist_invalid_content(fake_mnist, field: str, value, pattern: str) -> None:
    root, raw = fake_mnist
    split, kind = field.split("_")
    name = MNIST_FILES[split][0 if kind == "images" else 1]
    for stale in (root / name, root / f"{name}.gz"):
        stale.unlink(missing_ok=True)
    write_idx(root / name, value(raw[field]))
    with pytest.raises(DataError, match=pattern):
        MNISTDataModule(root=str(root)).setup()


@pytest.mark.parametrize("bad", [10, -1, "3", 2.0, True])
def test_bad_held_out_class(tmp_path: Path, bad) -> None:
    with pytest.raises(DataError, match=r"held_out_class.*\[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]"):
        MNISTDataModule(root=str(tmp_path), held_out_class=bad)
    with pytest.raises(DataError, match=r"held_out_class.*\[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]"):
        DigitsDataModule(held_out_class=bad)


def test_held_out_class_must_be_present(tmp_path: Path) -> None:
    root = tmp_path / "m"
    write_fake_mnist(root)
    for split in ("train", "t10k"):  # drop class 7 from the release
        images, labels = read_idx(root / (MNIST_FILES[split][0] + ".gz")), read_idx(root / MNIST_FILES[split][1])
        keep = labels != 7
        write_idx(root / (MNIST_FILES[split][0] + ".gz"), images[keep], compress=True)
        write_idx(root / MNIST_FILES[split][1], labels[keep])
    with pytest.raises(DataError, match=r"held_out_class 7 is not one of the classes present: \[0, 1, 2, 3, 4, 5, 6, "
                                        r"8, 9\]"):
        MNISTDataModule(root=str(root), held_out_class=7).setup()


def test_mnist_configs_load_and_point_at_data_folders(fake_mnist) -> None:
    from benchmark.config import ComponentConfig, load_component

    for name in ("mnist", "fashion_mnist"):
        config = load_component("datasets", name)
        assert config.init_args["root"] == f"data/{name}"
        dm = ComponentConfig(name, config.class_path, {**config.init_args, "root": str(fake_mnist[0])}).instantiate()
        dm.prepare_data()
        assert dm.image_shape == (1, 28, 28)
    assert load_component("datasets", "digits").instantiate().image_size == 32


# ---------------------------------------------------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def digits_raw() -> tuple[np.ndarray, np.ndarray]:
    return load_digit_arrays()


@pytest.fixture(scope="module")
def digits_dm() -> DigitsDataModule:
    dm = DigitsDataModule()
    dm.setup()
    return dm


def test_digits_split_sizes_and_stratification(digits_dm, digits_raw) -> None:
    _, labels = digits_raw
    s = digits_dm.splits
    assert len(labels) == 1797
    assert len(s.train) + len(s.val) + len(s.tests["healthy"]) + len(s.tests["anomalous"]) == 1797
    n_normal = int((labels != 0).sum())
    assert len(s.tests["healthy"]) == round(0.2 * n_normal)
    assert len(s.val) == round(0.1 * (n_normal - len(s.tests["healthy"])))
    assert len(s.tests["anomalous"]) == int((labels == 0).sum())
    for name, arrays in (("train", s.train), ("val", s.val), ("healthy", s.tests["healthy"])):
        found = labels[[_index(x) for x in arrays.subjects]]
        counts = np.bincount(found, minlength=10)
        assert counts[0] == 0 and (counts[1:] > 0).all(), name
        share = counts[1:] / counts[1:].sum()
        expected = np.bincount(labels, minlength=10)[1:] / n_normal
        assert np.abs(share - expected).max() < 0.02, name  # class proportions kept
    assert (labels[[_index(x) for x in s.tests["anomalous"].subjects]] == 0).all()
    assert (s.tests["anomalous"].labels == 1).all() and (s.tests["healthy"].labels == 0).all()


def test_digits_values_match_an_independent_bilinear_upsampling(digits_dm, digits_raw) -> None:
    images, _ = digits_raw
    s = digits_dm.splits.train
    assert digits_dm.image_shape == (1, 32, 32)
    assert s.images.min() >= 0.0 and s.images.max() <= 1.0

    def bilinear(img: np.ndarray, size: int) -> np.ndarray:  # align_corners=False, edges clamped
        src = np.clip((np.arange(size) + 0.5) * img.shape[0] / size - 0.5, 0, None)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, img.shape[0] - 1)
        w = (src - lo)[:, None]
        rows = img[lo] * (1 - w) + img[hi] * w
        return rows[:, lo] * (1 - w.T) + rows[:, hi] * w.T

    for k in range(5):
        raw = images[_index(s.subjects[k])] / 16.0
        np.testing.assert_allclose(s.images[k, 0], bilinear(raw, 32), atol=1e-5)
        assert abs(s.images[k].mean() - raw.mean()) < 0.03

    dm = DigitsDataModule(image_size=24)  # 3x upsampling: pixel 3k+1 lies exactly on source pixel k
    dm.setup()
    first = dm.splits.tests["anomalous"]
    raw = images[_index(first.subjects[0])] / 16.0
    np.testing.assert_allclose(first.images[0, 0, 1::3, 1::3], raw, atol=1e-6)


def test_digits_determinism_and_seed(digits_dm) -> None:
    same = DigitsDataModule(seed=0)
    same.setup()
    other = DigitsDataModule(seed=1)
    other.setup()
    for name in ("train", "val"):
        np.testing.assert_array_equal(getattr(same.splits, name).subjects, getattr(digits_dm.splits, name).subjects)
        np.testing.assert_array_equal(getattr(same.splits, name).images, getattr(digits_dm.splits, name).images)
    np.testing.assert_array_equal(same.splits.tests["healthy"].subjects, digits_dm.splits.tests["healthy"].subjects)
    assert not np.array_equal(other.splits.tests["healthy"].subjects, digits_dm.splits.tests["healthy"].subjects)
    assert not np.array_equal(other.splits.val.subjects, digits_dm.splits.val.subjects)
    np.testing.assert_array_equal(other.splits.tests["anomalous"].subjects,
                                  digits_dm.splits.tests["anomalous"].subjects)  # always every held-out image


def test_digits_other_class_and_size(digits_raw) -> None:
    _, labels = digits_raw
    dm = DigitsDataModule(held_out_class=7, image_size=16, batch_size=32)
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (32, 1, 16, 16) and set(batch) == set(BATCH_KEYS)
    anomalous = dm.splits.tests["anomalous"]
    assert len(anomalous) == int((labels == 7).sum())
    assert (labels[[_index(x) for x in anomalous.subjects]] == 7).all()


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"test_fraction": 0.0}, r"test_fraction must be a number strictly between 0 and 1, got 0\.0"),
    ({"test_fraction": 1}, r"test_fraction must be .* got 1"),
    ({"val_fraction": -0.1}, r"val_fraction must be"),
    ({"val_fraction": 1.5}, r"val_fraction must be"),
    ({"image_size": 4}, r"image_size must be an integer >= 8, got 4"),
    ({"image_size": 28.0}, r"image_size must be an integer"),
    ({"seed": -1}, r"seed must be a non-negative integer"),
    ({"batch_size": 0}, r"batch_size must be >= 1"),
])
def test_digits_bad_arguments(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        DigitsDataModule(**kwargs)


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"max_train": 1}, r"max_train must be None or an integer >= 2"),
    ({"max_test_per_class": 0}, r"max_test_per_class must be None or an integer >= 1"),
    ({"val_fraction": 0}, r"val_fraction must be"),
    ({"image_size": 7}, r"image_size must be an integer >= 8"),
])
def test_mnist_bad_arguments(tmp_path: Path, kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        MNISTDataModule(root=str(tmp_path), **kwargs)


# -------------------------------------------------------------------------------------------------------- protocol
def test_stratified_split_is_deterministic_and_proportional() -> None:
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    rest, part = stratified_split(labels, 0.1, np.random.default_rng(3))
    rest2, part2 = stratified_split(labels, 0.1, np.random.default_rng(3))
    np.testing.assert_array_equal(part, part2)
    np.testing.assert_array_equal(rest, rest2)
    assert np.bincount(labels[part]).tolist() == [4, 3, 2, 1]
    assert sorted(np.concatenate([rest, part]).tolist()) == list(range(100))
    _, other = stratified_split(labels, 0.1, np.random.default_rng(4))
    assert not np.array_equal(part, other)
    assert len(stratified_sample(labels, 7, 0)) == 7  # largest remainders fill up to the exact total
    with pytest.raises(DataError, match="cannot split 1 image"):
        stratified_split(labels[:1], 0.5, 0)


def test_to_unit_images_downsampling_is_antialiased() -> None:
    checker = (np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)[None]
    small = to_unit_images(checker, 255, 8)
    assert small.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(small, 0.5, atol=0.05)  # antialiasing averages the checkerboard
    np.testing.assert_allclose(to_unit_images(checker, 255, 32)[0, 0], checker[0] / 255.0)
