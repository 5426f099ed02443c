"""ASC-Net's three NumPy files, read as they are: users of raun1/ASC-NET (Keras) switch to NormBench unconverted.

ASC-Net (Dey & Hong, MICCAI 2021) trains from two image sets: a *reference* set of healthy images, shown to its
discriminator as real, and an *input* set of images that may contain anomalies, which its generator decomposes.
Its code reads them from ``.npy`` files; this module reads the same files from one folder ``root`` (the names are
init arguments, defaults below):

==================================  ========  ============================================================
file                                required  content
==================================  ========  ============================================================
``good_dic_to_train_disc.npy``      yes       reference set: healthy images, N x H x W x 1
``input_for_generator.npy``         yes       input set: images that may contain anomalies, M x H x W x 1
``tumor_mask_for_generator.npy``    no [#]_   binary masks of the input set, M x H x W x 1
==================================  ========  ============================================================

.. [#] Needed to evaluate on the input set: a missing mask file is an error that says so, unless ``mask_file`` is
   set to None (see below).

**Arrays.** Exactly 4-D, channels-last as Keras writes them (N x H x W x 1, one channel), square images, the same
H x W in all files. Image values are floats (float16/32/64) in [0, 1], or uint8 0..255, which is scaled by 1/255;
any other dtype (other integers, bool) and any value outside [0, 1], NaN or Inf is an error. Masks are bool or
numeric with values exactly 0 and 1, one per input image (the input array's shape). Files are loaded with
``np.load(allow_pickle=False)``: object arrays, pickles and ``.npz`` archives are refused. Images come out as
float32 [N,1,S,S] with S the native size, or ``image_size`` when given (bilinear with antialiasing for the images,
nearest for masks and roi). Every bad file stops with a :class:`~datamodules.errors.DataError` that names the file,
the problem and what to do (a channels-first N x 1 x H x W array, say, is recognised and the ``np.moveaxis`` call
that fixes it is given).

**Splits.** All random choices come from numpy Generators seeded by ``(seed, stream)``, one stream per purpose, and
every split is sorted by array index; a part of ``n`` images is ``round(fraction * n)`` images.

=====================  =========  ===========  ================================================================
split                  source     label        content
=====================  =========  ===========  ================================================================
``test/healthy``       reference  0            ``healthy_test_fraction`` of the reference set, drawn first
``val``                reference  0            ``val_fraction`` of the rest of the reference set
``train``              reference  0            the rest of the reference set
``test/input``         input      from mask    ``test_fraction`` of the input set, with its masks
``unlabelled``         input      0            the rest of the input set, masks all zero
=====================  =========  ===========  ================================================================

The original trains its generator on the whole input set (its repository has no test split); NormBench never trains
on test images, so the input set is split: the test set (named by ``test_set_name``, default ``input``) keeps its masks,
labelled 1 when a mask has at least ``min_lesion_pixels`` pixels (counted at the output size); the ``unlabelled``
pool (what methods like ASC-Net train on besides the reference set) gets all-zero masks and labels 0: the masks of
its images never leave the file, so no method can use them. ``test_fraction: 1.0`` puts the whole input set in the
test set and gives no unlabelled pool (a method that needs one then stops with a clear error). With
``mask_file: None`` there are no pixel labels: the whole input set is the unlabelled pool and ``healthy`` is the
only test set (training works; evaluation gives only healthy-data figures such as false-positive rates). A split
that would be empty (too few images for the fractions) is an error naming the file and the counts.

**roi.** The foreground of each image, ``image > foreground_threshold`` (default 0, on the [0, 1] values, computed
at the native size and resized nearest), as in the paper's figure where the estimated mask is restricted to the
input foreground. Pixel metrics use roi pixels only: mask pixels outside the foreground are not scored.

**Subjects.** The files record no patients, so each image is its own subject, ``ascnet_npy/reference/<index>`` or
``ascnet_npy/input/<index>``, with ``slice`` = its index in the array. Slices of one patient may therefore land
in different splits (train and healthy test, say, or unlabelled and input test), which the splits cannot prevent;
per-volume statistics are per image.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.base import HEALTHY_TEST_SET, AnomalyDataModule, DatasetSplits, SliceArrays
from datamodules.errors import DataError
from datamodules.leave_one_class_out import check_fraction, check_image_size, check_seed, to_unit_images

__all__ = [
    "ASCNET_FILES",
    "AscNetArrays",
    "AscNetNpyDataModule",
    "find_ascnet_files",
    "load_ascnet_arrays",
    "read_npy",
]

ASCNET_FILES = {  # role -> default file name in raun1/ASC-NET
    "reference": "good_dic_to_train_disc.npy",
    "input": "input_for_generator.npy",
    "mask": "tumor_mask_for_generator.npy",
}
_ROLES = {"reference": "reference set", "input": "input set", "mask": "masks"}  # short names for messages
_CONTENTS = {
    "reference": "reference set: healthy images",
    "input": "input set: images that may contain anomalies",
    "mask": "masks of the input set, needed for evaluation",
}
_STREAMS = {"healthy_test": 0, "val": 1, "input_test": 2}
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK"
_CHUNK = 1024
_FIX_CONFIG = ("Point the dataset at the folder with datasets.ascnet_npy.root=/path/to/folder (or init_args.root "
               "in configs/datasets/ascnet_npy.yaml), or change the file names with "
               "datasets.ascnet_npy.reference_file=..., input_file=..., mask_file=...")


# ------------------------------------------------------------------------------------------------------------ reading
def _expected_files(root: Path, names: dict[str, str | None]) -> str:
    listed = [f"{name} ({_CONTENTS[role]})" for role, name in names.items() if name is not None]
    present = sorted(p.name for p in root.glob("*.npy")) if root.is_dir() else []
    found = f"; .npy files there: {', '.join(present[:10])}{' ...' if len(present) > 10 else ''}" if present else ""
    return f"the folder {root} (absolute: {root.resolve()}) must hold {', '.join(listed)}{found}"


def read_npy(path: str | Path, role: str = "array") -> np.ndarray:
    """One plain numeric array from a ``.npy`` file, loaded with ``allow_pickle=False``.

    DataError naming the file for a missing file, a ``.npz`` archive, a file that is not ``.npy`` (a pickle, say),
    an object array and a truncated or corrupt file.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} ({role}) is a folder; expected a .npy file")
    if not path.is_file():
        raise DataError(f"file not found: {path} ({role})")
    with path.open("rb") as handle:
        head = handle.read(len(_NPY_MAGIC))
    if head[:2] == _ZIP_MAGIC:
        raise DataError(f"{path}: this is a .npz archive (np.savez), not a .npy file; NormBench reads one array per "
                        "file: save each array on its own with np.save(path, array)")
    if head != _NPY_MAGIC:
        kind = " (it looks like a pickle)" if head[:1] == b"\x80" else ""
        raise DataError(f"{path}: not a .npy file{kind}: it starts with bytes {head.hex(' ') or '(none)'}, a .npy "
                        "file starts with \\x93NUMPY; save the array with np.save(path, array)")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "pickle" in str(error) or "Object arrays" in str(error):
            raise DataError(f"{path}: holds an object array (pickled Python objects), which NormBench does not load "
                            "(np.load with allow_pickle=False, for safety); save a numeric array instead, e.g. "
                            "np.save(path, np.stack(list_of_images).astype(np.float32))") from error
        raise DataError(f"{path}: truncated or corrupt .npy file ({error}); write it again with np.save") from error
    except (OSError, EOFError, SyntaxError) as error:
        raise DataError(f"{path}: cannot read the .npy file ({type(error).__name__}: {error}); "
                        "write it again with np.save") from error
    if not isinstance(array, np.ndarray):  # defensive: np.load returns an NpzFile for archives
        raise DataError(f"{path}: expected one array, got {type(array).__name__}")
    return array


def _check_layout(array: np.ndarray, path: Path, role: str) -> None:
    """N x H x W x 1, non-empty, square; DataError naming the file and the fix otherwise."""
    shape = array.shape
    what = f"{path} ({_ROLES[role]})"
    if array.ndim == 3:
        raise DataError(f"{what} has shape {shape}, 3-D; ASC-Net's files are 4-D N x H x W x 1 (channels-last, "
                        "Keras): add the channel axis with np.save(path, a[..., np.newaxis])")
    if array.ndim != 4:
        raise DataError(f"{what} has shape {shape}, {array.ndim}-D; expected a 4-D array N x H x W x 1 "
                        "(images, height, width, one channel; channels-last as Keras writes it)")
    if shape[-1] != 1:
        if shape[1] == 1:
            raise DataError(f"{what} has shape {shape}, which looks channels-first (N x 1 x H x W); ASC-Net's files "
                            "are channels-last N x H x W x 1: convert with np.save(path, np.moveaxis(a, 1, -1))")
        raise DataError(f"{what} has shape {shape}: its last axis has {shape[-1]} channels, expected N x H x W x 1 "
                        "(one grayscale channel, channels-last)")
    if 0 in shape:
        raise DataError(f"{what} is empty: shape {shape}; it must hold at least one image")
    if shape[1] != shape[2]:
        raise DataError(f"{what} holds images of {shape[1]} x {shape[2]} pixels (shape {shape}); NormBench needs "
                        "square images: crop or pad them to S x S before saving")


def _image_scale(array: np.ndarray, path: Path, role: str) -> float:
    """The value that maps to 1 (1 for floats in [0, 1], 255 for uint8) after checking dtype and values."""
    what = f"{path} ({_ROLES[role]})"
    if array.dtype == np.uint8:
        return 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{what} has dtype {array.dtype}; images must be floats in [0, 1] or uint8 0..255 (scaled by "
                        "1/255): convert with a.astype(np.float32) / a.max() or a.astype(np.uint8)")
    finite = np.isfinite(array)
    if not finite.all():
        n_nan, n_inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        raise DataError(f"{what} contains {n_nan} NaN and {n_inf} Inf value(s), e.g. in image "
                        f"{int(np.argwhere(~finite)[0][0])}; replace them (np.nan_to_num) or drop those images")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise DataError(f"{what} has values in [{low:g}, {high:g}], outside [0, 1]; rescale the images to [0, 1] "
                        "(e.g. min-max per image), or store 0..255 images as uint8")
    return 1.0


def _check_masks(masks: np.ndarray, path: Path, input_shape: tuple[int, ...], input_path: Path) -> None:
    _check_layout(masks, path, "mask")
    if masks.shape != input_shape:
        raise DataError(f"{path} (masks) has shape {masks.shape}, the input set {input_path} has shape {input_shape}; "
                        "there must be one mask per input image, of the same shape (M x H x W x 1)")
    if not (masks.dtype == np.bool_ or np.issubdtype(masks.dtype, np.number)):
        raise DataError(f"{path} (masks) has dtype {masks.dtype}; masks must be bool or numeric 0/1")
    if masks.dtype != np.bool_:
        bad = (masks != 0) & (masks != 1)
        if bad.any():
            values = np.unique(masks[bad])
            raise DataError(f"{path} (masks) is not binary: {int(bad.sum())} value(s) other than 0 and 1, e.g. "
                            f"{values[:6].tolist()} (in image {int(np.argwhere(bad)[0][0])}); masks must be exactly "
                            "0 or 1: binarise them first, e.g. (m > 0.5).astype(np.uint8)")


@dataclass
class AscNetArrays:
    """The validated arrays of one folder, as stored (N x H x W x 1), with the value that maps to 1 per image set."""

    reference: np.ndarray
    input: np.ndarray
    masks: np.ndarray | None
    reference_scale: float
    input_scale: float
    paths: dict[str, Path]


def find_ascnet_files(root: str | Path, reference_file: str = ASCNET_FILES["reference"],
                      input_file: str = ASCNET_FILES["input"],
                      mask_file: str | None = ASCNET_FILES["mask"]) -> dict[str, Path]:
    """Role (``reference``, ``input``, ``mask``) -> path of each configured file; DataError listing what to do."""
    root = Path(root)
    names = {"reference": reference_file, "input": input_file, "mask": mask_file}
    paths = {role: root / name for role, name in names.items() if name is not None}
    for role, path in paths.items():
        if not path.is_file():
            extra = (" The masks are needed to evaluate on the input set; to train without them, set mask_file to "
                     "null (datasets.ascnet_npy.mask_file=null): the whole input set is then the unlabelled pool and "
                     "'healthy' the only test set." if role == "mask" else "")
            raise DataError(f"file not found: {path} ({_ROLES[role]}). ASC-Net's NumPy files: "
                            f"{_expected_files(root, names)}.{extra} {_FIX_CONFIG}")
    return paths


def load_ascnet_arrays(root: str | Path, reference_file: str = ASCNET_FILES["reference"],
                       input_file: str = ASCNET_FILES["input"],
                       mask_file: str | None = ASCNET_FILES["mask"]) -> AscNetArrays:
    """Read and validate ASC-Net's files in ``root`` (see the module docstring); ``mask_file`` None skips masks."""
    paths = find_ascnet_files(root, reference_file, input_file, mask_file)
    arrays = {}
    for role in ("reference", "input"):
        arrays[role] = read_npy(paths[role], _ROLES[role])
        _check_layout(arrays[role], paths[role], role)
    scales = {role: _image_scale(arrays[role], paths[role], role) for role in ("reference", "input")}
    ref_size, in_size = arrays["reference"].shape[1:3], arrays["input"].shape[1:3]
    if ref_size != in_size:
        raise DataError(f"{paths['reference']} holds images of {ref_size[0]} x {ref_size[1]} pixels (shape "
                        f"{arrays['reference'].shape}), {paths['input']} of {in_size[0]} x {in_size[1]} (shape "
                        f"{arrays['input'].shape}); both sets must have the same image size")
    masks = None
    if "mask" in paths:
        masks = read_npy(paths["mask"], _ROLES["mask"])
        _check_masks(masks, paths["mask"], arrays["input"].shape, paths["input"])
    return AscNetArrays(arrays["reference"], arrays["input"], masks, scales["reference"], scales["input"], paths)


# ------------------------------------------------------------------------------------------------------------ arrays
def _resize_binary(binary: np.ndarray, size: int) -> np.ndarray:
    """Binary [n,H,W] -> uint8 [n,1,S,S], nearest-neighbour ('nearest-exact': pixel centres) when resizing."""
    block = torch.from_numpy(np.ascontiguousarray(binary, dtype=np.float32))[:, None]
    if block.shape[-1] != size:
        block = F.interpolate(block, size=(size, size), mode="nearest-exact")
    return (block > 0.5).to(torch.uint8).numpy()


def _foreground(images: np.ndarray, scale: float, threshold: float, size: int) -> np.ndarray:
    """uint8 [N,1,S,S]: pixels whose [0, 1] value (native size, float32 as the images) exceeds ``threshold``."""
    out = np.empty((len(images), 1, size, size), dtype=np.uint8)
    for start in range(0, len(images), _CHUNK):
        unit = np.asarray(images[start:start + _CHUNK, :, :, 0], dtype=np.float32) / np.float32(scale)
        out[start:start + _CHUNK] = _resize_binary(unit > threshold, size)
    return out


def _binary_masks(masks: np.ndarray, size: int) -> np.ndarray:
    out = np.empty((len(masks), 1, size, size), dtype=np.uint8)
    for start in range(0, len(masks), _CHUNK):
        out[start:start + _CHUNK] = _resize_binary(masks[start:start + _CHUNK, :, :, 0] != 0, size)
    return out


def _draw(index: np.ndarray, fraction: float, stream: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rest, part)``, both sorted, where ``part`` is a random ``round(fraction * n)`` of ``index``."""
    n_part = round(fraction * len(index))
    order = np.random.default_rng([seed, _STREAMS[stream]]).permutation(index)
    part = np.sort(order[:n_part])
    return np.setdiff1d(index, part, assume_unique=True), part


def _check_not_empty(parts: dict[str, np.ndarray], path: Path, n: int, settings: str) -> None:
    empty = [name for name, part in parts.items() if len(part) == 0]
    if empty:
        counts = ", ".join(f"{name} {len(part)}" for name, part in parts.items())
        raise DataError(f"{path}: its {n} image(s) give the split(s) {', '.join(repr(e) for e in empty)} no image "
                        f"({counts}; {settings}, each part is round(fraction x images)); change the fractions or "
                        "use a file with more images")


# ------------------------------------------------------------------------------------------------------- datamodule
class AscNetNpyDataModule(AnomalyDataModule):
    """ASC-Net's ``.npy`` files in ``root``: healthy train / val / ``healthy`` test from the reference set, the
    ``input`` test set (with masks) and the ``unlabelled`` pool from the input set. See the module docstring.

    Args:
        root: folder with the files (nothing is downloaded or converted).
        reference_file, input_file: file names of the reference (healthy) and input sets in ``root``.
        mask_file: file name of the input set's masks; None: no masks (whole input set unlabelled, no input test set).
        image_size: side length of the output images; None keeps the files' native (square) size.
        healthy_test_fraction: fraction of the reference set in the ``healthy`` test set (drawn first).
        val_fraction: fraction of the rest of the reference set in ``val``; the remainder is ``train``.
        test_fraction: fraction of the input set in the test set (in (0, 1]; 1.0: no unlabelled pool).
        test_set_name: name of the input test set (letters, digits, ``_``, ``-``; not ``healthy``).
        foreground_threshold: roi = image > this value (on [0, 1] intensities, in [0, 1)).
        min_lesion_pixels: an input test image is labelled anomalous when its mask has at least this many pixels.
        seed: dataset seed of the splits (independent of the training seed).
        batch_size, eval_batch_size, num_workers: loader settings (see :class:`AnomalyDataModule`).
    """

    def __init__(
        self,
        root: str,
        reference_file: str = ASCNET_FILES["reference"],
        input_file: str = ASCNET_FILES["input"],
        mask_file: str | None = ASCNET_FILES["mask"],
        image_size: int | None = None,
        healthy_test_fraction: float = 0.2,
        val_fraction: float = 0.1,
        test_fraction: float = 0.5,
        test_set_name: str = "input",
        foreground_threshold: float = 0.0,
        min_lesion_pixels: int = 10,
        seed: int = 0,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers)
        if not isinstance(root, str | Path) or not str(root):
            raise ValueError(f"root must be the path of the folder with ASC-Net's .npy files, got {root!r}")
        for name, value in (("reference_file", reference_file), ("input_file", input_file), ("mask_file", mask_file)):
            if value is None and name == "mask_file":
                continue
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a file name in root, got {value!r}")
        self.root = Path(root)
        self.reference_file, self.input_file, self.mask_file = reference_file, input_file, mask_file
        self.image_size = None if image_size is None else check_image_size(image_size, minimum=8)
        self.healthy_test_fraction = check_fraction("healthy_test_fraction", healthy_test_fraction)
        self.val_fraction = check_fraction("val_fraction", val_fraction)
        if (not isinstance(test_fraction, numbers.Real) or isinstance(test_fraction, bool)
                or not 0.0 < float(test_fraction) <= 1.0):
            raise ValueError(f"test_fraction must be a number in (0, 1] (1.0: no unlabelled pool), "
                             f"got {test_fraction!r}")
        self.test_fraction = float(test_fraction)
        if not isinstance(test_set_name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", test_set_name) \
                or test_set_name == HEALTHY_TEST_SET:
            raise ValueError(f"test_set_name must be a name of letters, digits, '_' or '-' other than "
                             f"{HEALTHY_TEST_SET!r}, got {test_set_name!r}")
        self.test_set_name = test_set_name
        if (not isinstance(foreground_threshold, numbers.Real) or isinstance(foreground_threshold, bool)
                or not 0.0 <= float(foreground_threshold) < 1.0):
            raise ValueError(f"foreground_threshold must be a number in [0, 1), got {foreground_threshold!r}")
        self.foreground_threshold = float(foreground_threshold)
        if not isinstance(min_lesion_pixels, numbers.Integral) or isinstance(min_lesion_pixels, bool) \
                or min_lesion_pixels < 1:
            raise ValueError(f"min_lesion_pixels must be an integer >= 1, got {min_lesion_pixels!r}")
        self.min_lesion_pixels = int(min_lesion_pixels)
        self.seed = check_seed(seed)

    def prepare_data(self) -> None:
        """Nothing to download or cache; fails early with instructions when a file is missing (contents: setup)."""
        find_ascnet_files(self.root, self.reference_file, self.input_file, self.mask_file)

    def load_splits(self) -> DatasetSplits:
        data = load_ascnet_arrays(self.root, self.reference_file, self.input_file, self.mask_file)
        size = self.image_size or data.reference.shape[1]
        threshold = self.foreground_threshold

        def split(arrays: np.ndarray, scale: float, index: np.ndarray, kind: str, name: str,
                  masks: np.ndarray | None = None) -> SliceArrays:
            images = to_unit_images(arrays[index, :, :, 0], scale, size)
            rois = _foreground(arrays[index], scale, threshold, size)
            if masks is None:  # healthy data, or the unlabelled pool whose masks stay in the file
                mask = np.broadcast_to(np.zeros((1, 1, size, size), dtype=np.uint8), (len(index), 1, size, size))
                labels = np.zeros(len(index), dtype=np.int64)
            else:
                mask = _binary_masks(masks[index], size)
                labels = (mask.reshape(len(index), -1).sum(axis=1) >= self.min_lesion_pixels).astype(np.int64)
            path = data.paths[kind]
            if not rois.any():
                raise DataError(f"{path}: split {name!r} has no foreground pixel (no value above foreground_threshold "
                                f"{threshold:g}), so nothing would be evaluated; lower foreground_threshold or check "
                                "the images (all black?)")
            return SliceArrays(images=images, masks=mask, rois=rois, labels=labels,
                               subjects=np.array([f"ascnet_npy/{kind}/{i}" for i in index]),
                               slices=index.astype(np.int64), source=f"{path}:{name}")

        reference = np.arange(len(data.reference))
        rest, healthy = _draw(reference, self.healthy_test_fraction, "healthy_test", self.seed)
        train, val = _draw(rest, self.val_fraction, "val", self.seed)
        _check_not_empty({f"test/{HEALTHY_TEST_SET}": healthy, "val": val, "train": train}, data.paths["reference"],
                         len(reference), f"healthy_test_fraction {self.healthy_test_fraction:g}, then val_fraction "
                         f"{self.val_fraction:g} of the rest")
        tests = {HEALTHY_TEST_SET: split(data.reference, data.reference_scale, healthy, "reference",
                                         f"test/{HEALTHY_TEST_SET}")}
        inputs = np.arange(len(data.input))
        if data.masks is None:
            pool = inputs
        else:
            pool, test = _draw(inputs, self.test_fraction, "input_test", self.seed)
            parts = {f"test/{self.test_set_name}": test}
            if self.test_fraction < 1.0:
                parts["unlabelled"] = pool
            _check_not_empty(parts, data.paths["input"], len(inputs), f"test_fraction {self.test_fraction:g}")
            tests[self.test_set_name] = split(data.input, data.input_scale, test, "input",
                                              f"test/{self.test_set_name}", data.masks)
        return DatasetSplits(
            train=split(data.reference, data.reference_scale, train, "reference", "train"),
            val=split(data.reference, data.reference_scale, val, "reference", "val"),
            tests=tests,
            unlabelled=split(data.input, data.input_scale, pool, "input", "unlabelled") if len(pool) else None,
        )
