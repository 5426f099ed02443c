"""Reader and writer of the IDX format of the MNIST / FashionMNIST releases, plain or gzip-compressed.

Layout (all numbers big-endian)::

    byte 0-1   0x00 0x00                 magic
    byte 2     dtype code                0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte 3     number of dimensions d
    4 * d      sizes, int32 each
    rest       prod(sizes) values of the dtype, row-major

Gzip compression is detected by the gzip magic bytes (1f 8b), not by the file name. Used by the leave-one-class-out
MNIST / FashionMNIST datasets (Zimmerer et al., MICCAI 2019); see :mod:`datamodules.mnist`.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from datamodules.errors import DataError

__all__ = ["IDX_DTYPES", "read_idx", "write_idx"]

IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _known_codes() -> str:
    return ", ".join(f"0x{code:02X} {dtype.newbyteorder('=').name}" for code, dtype in IDX_DTYPES.items())


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed) into a native-byte-order numpy array.

    Raises DataError naming the file for a missing file, a corrupt gzip stream, a wrong magic number, an unknown
    dtype code, a truncated header or data, and trailing bytes after the data.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    compressed = raw[:2] == _GZIP_MAGIC
    if compressed:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path}: corrupt gzip data ({error}); re-download or re-extract the file") from error
    what = "decompressed file" if compressed else "file"
    if len(raw) < 4:
        raise DataError(f"{path}: not an IDX file: the {what} has {len(raw)} byte(s), fewer than the 4-byte magic")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path}: not an IDX file: it starts with bytes {raw[0]:02x} {raw[1]:02x}, "
                        "an IDX file starts with 00 00 (MNIST's uncompressed or .gz files)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX dtype code 0x{code:02X} in byte 2; known codes: {_known_codes()}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header: {ndim} dimensions need {header} header bytes, "
                        f"the {what} has {len(raw)}")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    if any(s < 0 for s in shape):
        raise DataError(f"{path}: negative size in the IDX header: {shape}")
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found < expected:
        raise DataError(f"{path}: truncated IDX data: the header promises shape {shape} of "
                        f"{dtype.newbyteorder('=').name}, i.e. {expected} bytes, but the {what} holds {found}; "
                        "the file is incomplete, re-download it")
    if found > expected:
        raise DataError(f"{path}: {found - expected} trailing byte(s) after the IDX data: the header promises shape "
                        f"{shape} of {dtype.newbyteorder('=').name}, i.e. {expected} bytes, the {what} holds {found}")
    data = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return data.reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, compress: bool = False) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``compress``); returns the path.

    Supported dtypes: uint8, int8, int16, int32, float32, float64; at most 255 dimensions of fewer than 2**31 items.
    Compressed output is reproducible (no timestamp in the gzip header).
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise ValueError(f"write_idx: dtype {array.dtype} is not storable in IDX; use one of {_known_codes()}")
    if array.ndim > 255 or any(s >= 2**31 for s in array.shape):
        raise ValueError(f"write_idx: shape {array.shape} does not fit an IDX header")
    code = _CODES[native]
    payload = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
               + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes())
    if compress:
        payload = gzip.compress(payload, mtime=0)
    path = Path(path)
    path.write_bytes(payload)
    return path
