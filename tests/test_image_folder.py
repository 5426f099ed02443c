"""Image-folder datamodule: tiny grey / RGB PNG and JPEG class folders, both layouts, the class protocol, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from benchmark.config import CONFIG_DIR, ComponentConfig
from datamodules.base import BATCH_KEYS
from datamodules.errors import DataError
from datamodules.image_folder import ImageFolderDataModule
from tests.releases import write_png

CLASSES = ("apple", "bird", "cat")


def grey_folder(root: Path, n: int = 10, size: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """root/<class>/img_XX.png: grey images whose mean brightness depends on the class; returns id -> pixels."""
    rng = np.random.default_rng(seed)
    written = {}
    for k, name in enumerate(CLASSES):
        for i in range(n):
            pixels = rng.integers(0, 60, (size, size)) + 80 * k
            written[f"{name}/img_{i:02d}.png"] = pixels.astype(np.uint8)
            write_png(root / name / f"img_{i:02d}.png", pixels)
    (root / "apple" / "notes.txt").write_text("ignored")
    (root / "apple" / ".DS_Store").write_bytes(b"\0")
    return written


def colour_folder(root: Path) -> None:
    """Pure red / green PNGs of several sizes and blue JPEGs; one nested folder."""
    for i, (h, w) in enumerate([(8, 8), (20, 16), (16, 24), (5, 9)]):
        write_png(root / "red" / f"r{i}.png", np.broadcast_to([255, 0, 0], (h, w, 3)))
        write_png(root / "green" / "nested" / f"g{i}.png", np.broadcast_to([0, 255, 0], (h, w, 3)))
        (root / "blue").mkdir(exist_ok=True)
        blue = np.zeros((h, w, 3), np.uint8)
        blue[..., 2] = 255
        Image.fromarray(blue).save(root / "blue" / f"b{i}.jpg", quality=100)


def module(root: Path, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(root=str(root), **{"held_out_class": "bird", "image_size": 12, **kwargs})
    dm.setup()
    return dm


def test_grey_folder_leave_one_class_out(tmp_path):
    written = grey_folder(tmp_path / "folder")
    dm = module(tmp_path / "folder", batch_size=4)
    s = dm.splits
    assert dm.test_set_names == ["healthy", "anomalous"] and dm.image_shape == (1, 12, 12)
    assert len(s.tests["healthy"]) == 4 and len(s.tests["anomalous"]) == 2  # round(0.2 * 10) per class
    assert len(s.val) == 2 and len(s.train) == 14  # round(0.1 * 16) of the pool
    anomalous = s.tests["anomalous"]
    assert all(x.startswith("bird/") for x in anomalous.subjects) and (anomalous.labels == 1).all()
    for arrays in (s.train, s.val, s.tests["healthy"]):
        assert not any(x.startswith("bird/") for x in arrays.subjects) and (arrays.labels == 0).all()
        assert {x.split("/")[0] for x in arrays.subjects} == {"apple", "cat"}  # stratified
    ids = [x for a in (s.train, s.val, *s.tests.values()) for x in a.subjects]
    assert len(ids) == len(set(ids)) == 22  # 30 images; the 8 training bird images are never used
    for arrays in (s.train, s.tests["anomalous"]):
        for subject, image in zip(arrays.subjects, arrays.images, strict=True):  # native size: exactly PNG / 255
            np.testing.assert_allclose(image[0], written[subject] / 255.0, atol=1e-6)
    torch.manual_seed(0)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == set(BATCH_KEYS) and batch["image"].shape == (4, 1, 12, 12)
    assert batch["image"].dtype == torch.float32 and batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    assert batch["mask"].shape == (4, 1, 12, 12) and not batch["mask"].any() and batch["roi"].all()

    # deterministic for a seed, another seed draws other images; the per-class test split ignores held_out_class
    again, other = module(tmp_path / "folder", batch_size=4), module(tmp_path / "folder", seed=1)
    for a, b in zip((s.train, s.val, *s.tests.values()), (again.splits.train, again.splits.val,
                                                          *again.splits.tests.values()), strict=True):
        np.testing.assert_array_equal(a.subjects, b.subjects)
        np.testing.assert_array_equal(a.images, b.images)
    assert set(other.splits.tests["anomalous"].subjects) != set(s.tests["anomalous"].subjects)
    cat_out = module(tmp_path / "folder", held_out_class="cat")
    assert {x for x in cat_out.splits.tests["healthy"].subjects if x.startswith("apple/")} == {
        x for x in s.tests["healthy"].subjects if x.startswith("apple/")}


def test_rgb_is_kept_and_images_of_any_size_are_resized(tmp_path):
    colour_folder(tmp_path / "rgb")
    dm = module(tmp_path / "rgb", held_out_class="red", image_size=16, test_fraction=0.25, val_fraction=0.2)
    s = dm.splits
    assert dm.image_shape == (3, 16, 16)
    red = np.asarray(s.tests["anomalous"].images)
    assert red.shape[1:] == (3, 16, 16) and red.min() >= 0.0 and red.max() <= 1.0
    np.testing.assert_allclose(red[:, 0], 1.0, atol=1e-6)  # a pure red image stays pure red, whatever its size
    np.testing.assert_allclose(red[:, 1:], 0.0, atol=1e-6)
    blue = np.asarray([img for x, img in zip(s.train.subjects, s.train.images, strict=True) if x.startswith("blue")])
    assert len(blue) and np.abs(blue[:, 2] - 1.0).max() < 0.02 and blue[:, :2].max() < 0.02  # JPEG: near-exact
    green = [x for x in (*s.train.subjects, *s.val.subjects, *s.tests["healthy"].subjects) if x.startswith("green")]
    assert sorted(green) == [f"green/nested/g{i}.png" for i in range(4)]  # nested folders, ids below root
    batch = next(iter(dm.test_dataloader()[1]))
    assert batch["image"].shape == (1, 3, 16, 16) and batch["mask"].shape == (1, 1, 16, 16)

    # forced channels: colour -> grey by luma, grey -> RGB by repetition
    grey = module(tmp_path / "rgb", held_out_class="red", image_size=16, channels=1, test_fraction=0.25)
    np.testing.assert_allclose(np.asarray(grey.splits.tests["anomalous"].images), 0.299, atol=1e-4)
    grey_folder(tmp_path / "grey")
    rgb = module(tmp_path / "grey", channels=3)
    images = np.asarray(rgb.splits.train.images)
    assert images.shape[1] == 3 and (images[:, 0] == images[:, 1]).all() and (images[:, 0] == images[:, 2]).all()


def test_train_test_layout_keeps_the_official_split(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("test", 3)):
        for name in ("0", "1", "2"):
            for i in range(n):  # the same file names in train and test
                write_png(tmp_path / "f" / split / name / f"{i}.png", rng.integers(0, 255, (10, 10)))
    dm = ImageFolderDataModule(root=str(tmp_path / "f"), held_out_class=1, image_size=8, max_test_per_class=2)
    dm.setup()
    s = dm.splits
    assert dm.image_shape == (1, 8, 8)
    assert sorted(s.tests["anomalous"].subjects) in (["test/1/0.png", "test/1/1.png"], ["test/1/0.png", "test/1/2.png"],
                                                     ["test/1/1.png", "test/1/2.png"])
    assert len(s.tests["healthy"]) == 4 and all(x.startswith("test/") for x in s.tests["healthy"].subjects)
    pool = [*s.train.subjects, *s.val.subjects]
    assert sorted(pool) == sorted(f"train/{c}/{i}.png" for c in ("0", "2") for i in range(6))

    small = ImageFolderDataModule(root=str(tmp_path / "f"), held_out_class="1", image_size=8, max_train=4, seed=3)
    small.setup()
    pool = [*small.splits.train.subjects, *small.splits.val.subjects]
    assert len(pool) == 4 and sorted(x.split("/")[1] for x in pool) == ["0", "0", "2", "2"]  # stratified


def test_layout_and_file_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataModule(root=str(tmp_path / "absent"), held_out_class="a").prepare_data()
    one = tmp_path / "one"
    write_png(one / "only" / "x.png", np.zeros((4, 4)))
    with pytest.raises(DataError, match=r"found 1 class folder\(s\) \['only'\]; .* at least 2"):
        module(one)
    grey_folder(tmp_path / "g", n=3)
    with pytest.raises(DataError, match=r"held_out_class 'dog' is not one of its classes \['apple', 'bird', 'cat'\]"):
        module(tmp_path / "g", held_out_class="dog")
    (tmp_path / "g" / "empty").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) \['empty'\] hold no .png"):
        module(tmp_path / "g")
    (tmp_path / "g" / "empty").rmdir()
    write_png(tmp_path / "g" / "loose.png", np.zeros((4, 4)))
    with pytest.raises(DataError, match=r"1 image\(s\) lie outside any class folder"):
        module(tmp_path / "g")
    (tmp_path / "g" / "loose.png").unlink()
    write_png(tmp_path / "g" / "solo" / "x.png", np.zeros((4, 4)))
    with pytest.raises(DataError, match=r"class folder\(s\) \['solo'\] hold fewer than 2 images"):
        module(tmp_path / "g")

    # every corrupt file in one message
    bad = tmp_path / "bad"
    grey_folder(bad, n=3)
    (bad / "apple" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bad / "cat" / "cut.jpg")
    (bad / "cat" / "cut.jpg").write_bytes((bad / "cat" / "cut.jpg").read_bytes()[:200])
    (bad / "bird" / "text.jpeg").write_text("hello")
    with pytest.raises(DataError) as error:
        module(bad, test_fraction=0.5)
    message = str(error.value)
    assert "3 image file(s) cannot be read" in message
    for name in ("broken.png", "cut.jpg", "text.jpeg"):
        assert name in message

    split = tmp_path / "split"
    grey_folder(split / "train", n=3)
    with pytest.raises(DataError, match="found train/ but no test/"):
        module(split)
    write_png(split / "test" / "apple" / "x.png", np.zeros((4, 4)))
    write_png(split / "test" / "dog" / "x.png", np.zeros((4, 4)))
    with pytest.raises(DataError, match=r"only in train: \['bird', 'cat'\], only in test: \['dog'\]"):
        module(split)


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"channels": 2}, "channels must be 1, 3 or None"),
    ({"held_out_class": ""}, "held_out_class must be a class folder name"),
    ({"held_out_class": True}, "held_out_class must be a class folder name"),
    ({"image_size": 4}, "image_size must be an integer >= 8"),
    ({"test_fraction": 1.0}, "test_fraction must be"),
    ({"val_fraction": 0}, "val_fraction must be"),
    ({"max_train": 1}, "max_train must be None or an integer >= 2"),
    ({"seed": -1}, "seed must be a non-negative integer"),
])
def test_bad_arguments(tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ImageFolderDataModule(**{"root": str(tmp_path), "held_out_class": "a", **kwargs})


def test_config_loads_and_points_at_the_data_folder(tmp_path):
    grey_folder(tmp_path / "folder")
    config = yaml.safe_load((CONFIG_DIR / "datasets" / "image_folder.yaml").read_text())
    assert config["init_args"]["root"] == "data/image_folder" and config["init_args"]["channels"] is None
    args = {**config["init_args"], "root": str(tmp_path / "folder"), "held_out_class": "cat"}
    dm = ComponentConfig("image_folder", config["class_path"], args).instantiate()
    dm.prepare_data()
    assert dm.image_shape == (1, 32, 32) and len(dm.splits.tests["anomalous"]) == 2
    upsampled = np.asarray(dm.splits.train.images)
    assert upsampled.min() >= 0.0 and upsampled.max() <= 1.0
