"""compressed-tensors' sparse bitmask formats (``quantization_config.sparsity_config.format``).

A sparse layer ``<module>`` keeps only its non-zero (``sparse-bitmask``) or its two largest of
every four (``sparse-24-bitmask``, 2:4) values, in the dtype they had when compressed (float, or
the int8 / float8 codes of a quantization format it wraps, whose scales stay beside them):

- ``<module>.shape`` int64 [2] (or [2, 1]): the dense [rows × cols];
- ``<module>.bitmask`` uint8 [rows × ⌈cols/8⌉]: which values are kept, 8 a byte, lowest bit first;
- ``<module>.compressed``: the kept values in row-major order — [rows × cols/2] for 2:4 (every row
  keeps half its values), flat for ``sparse-bitmask``, with ``<module>.row_offsets`` int64 [rows]
  the position of each row's first value.

Row r needs row r of the bitmask and that row's values only.  The arithmetic here is that of the
package's own compressors (``Sparse24BitMaskTensor``, ``BitmaskTensor``), tested against their output.
"""
from __future__ import annotations

import numpy as np
import torch

TWO_FOUR, UNSTRUCTURED = "sparse-24-bitmask", "sparse-bitmask"
FORMATS = (TWO_FOUR, UNSTRUCTURED)
PARTS = ("compressed", "bitmask", "shape")


def unpack_bitmask(bitmask: torch.Tensor, cols: int) -> torch.Tensor:
    """uint8 [rows × ⌈cols/8⌉] -> bool [rows × cols] (lowest bit first, as numpy's ``bitorder="little"``)."""
    bits = np.unpackbits(bitmask.contiguous().numpy().view(np.uint8), axis=-1, count=cols, bitorder="little")
    return torch.from_numpy(bits.view(bool))


def scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The dense [rows × cols] tensor holding ``values`` (row-major) where ``mask`` is set, zero
    elsewhere, in the values' dtype (float8 codes moved as bytes: code 0 is +0.0)."""
    flat = values.reshape(-1)
    raw = flat.dtype.is_floating_point and flat.element_size() == 1
    if raw:
        flat = flat.view(torch.uint8)
    out = torch.zeros(mask.shape, dtype=flat.dtype)
    out[mask] = flat
    return out.view(values.dtype) if raw else out


def row_counts(mask: torch.Tensor) -> np.ndarray:
    """Number of kept values of each row."""
    return mask.sum(1).numpy()


def value_positions(offsets: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Positions in the flat values of the rows starting at ``offsets`` with ``counts`` values each
    (rows in increasing order: the positions are sorted and distinct)."""
    if not len(counts):
        return np.zeros(0, np.int64)
    starts = np.repeat(np.asarray(offsets, np.int64) - np.cumsum(counts) + counts, counts)
    return starts + np.arange(int(counts.sum()))
