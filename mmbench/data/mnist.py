"""MNIST raw files (IDX format) from their canonical sources, with the published md5s."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Callable, Optional, Tuple

import numpy as np

from ..errors import MMBenchError
from .download import Resource, fetch

MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def resource(filename: str) -> Resource:
    return Resource(filename, FILES[filename], tuple(m + filename for m in MIRRORS))


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip'd): magic 0x0000 <dtype byte> <ndim byte>, big-endian dims, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise MMBenchError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(int)
    dtype = np.dtype(IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    n = int(np.prod(dims)) if ndim else 0
    if len(data) - offset != n * dtype.itemsize:
        raise MMBenchError(f"{path}: IDX header promises {n} values of {dtype}, the file holds {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def load(split: str, raw_dir: Path, source: Optional[Path] = None,
         progress: Optional[Callable[[str, int, int], None]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """MNIST `split` ("train" or "test") as uint8 N×28×28 images and int64 labels."""
    prefix = SPLIT_PREFIX[split]
    images = read_idx(fetch(resource(f"{prefix}-images-idx3-ubyte.gz"), raw_dir, source, progress))
    labels = read_idx(fetch(resource(f"{prefix}-labels-idx1-ubyte.gz"), raw_dir, source, progress))
    if images.shape[0] != labels.shape[0]:
        raise MMBenchError(f"MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
    return images.astype(np.uint8), labels.astype(np.int64)
