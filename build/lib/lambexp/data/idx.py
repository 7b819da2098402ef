"""The IDX file format MNIST ships in (uint8 arrays behind a big-endian header), and file digests.

Header: two zero bytes, the type code 0x08 (unsigned byte), the number of dimensions,
then each dimension as a big-endian uint32 — so images start 00 00 08 03, labels 00 00 08 01.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np

UBYTE = 0x08  # IDX type code of unsigned bytes, the only type MNIST uses


def idx_header(shape: tuple[int, ...]) -> bytes:
    """The IDX header of an unsigned-byte array of ``shape`` (1 to 3 dimensions)."""
    if not 1 <= len(shape) <= 3:
        raise ValueError(f"IDX arrays here have 1 to 3 dimensions, not {len(shape)}")
    return bytes([0, 0, UBYTE, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array (labels (N,), images (N, 28, 28)) as one IDX file."""
    if array.dtype != np.uint8:
        raise ValueError(f"IDX arrays here are uint8, not {array.dtype}")
    with open(path, "wb") as f:
        f.write(idx_header(array.shape))
        f.write(np.ascontiguousarray(array).tobytes())


def read_idx(path: Path) -> np.ndarray:
    """Read an unsigned-byte IDX file into a uint8 array; ValueError if it is not one."""
    data = Path(path).read_bytes()
    if len(data) < 4 or data[:3] != bytes([0, 0, UBYTE]) or not 1 <= data[3] <= 3:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (header {data[:4].hex()})")
    ndim = data[3]
    start = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:start])
    if len(data) - start != int(np.prod(shape)):
        raise ValueError(f"{path}: {len(data) - start} data bytes, header says shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=start).reshape(shape).copy()


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file's bytes (``md5`` for the data files, ``sha256`` for the wheel)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)  # a checksum, not a signature
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
