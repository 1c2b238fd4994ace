"""Arrow columns built from numpy arrays in bulk, for the demo generators.

Each builder makes a whole column at once (no per-row Python), bit-exactly where it matters:
decimals from integer units, timestamps from microseconds since the epoch (UTC).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

Array = npt.NDArray[Any]

SECOND = 1_000_000
"""Timestamps are counted in microseconds."""
HOUR = 3600 * SECOND
DAY = 24 * HOUR
_UUID_SLICE = 1 << 18


def category_array(values: Sequence[str], index: Array, missing: Array | None = None) -> pa.Array:
    """Strings picked from ``values`` by position, null where ``missing``."""
    indices = pa.array(index.astype(np.int32), mask=missing)
    return pa.DictionaryArray.from_arrays(
        indices, pa.array(list(values), pa.string())
    ).dictionary_decode()


def decimal_array(units: Array, scale: int = 2, missing: Array | None = None) -> pa.Array:
    """Decimal(18, scale) values from integers counting units of 10**-scale, built bit-exactly.

    Null where ``missing``.
    """
    units = units.astype(np.int64)
    words = np.empty((len(units), 2), np.int64)
    words[:, 0] = units
    words[:, 1] = units >> 63  # two's complement sign extension to 128 bits
    validity = None
    if missing is not None:
        validity = pa.py_buffer(np.packbits(~missing.astype(bool), bitorder="little"))
    return pa.Array.from_buffers(
        pa.decimal128(18, scale), len(units), [validity, pa.py_buffer(words)]
    )


def timestamp_array(moments: Array, missing: Array | None = None) -> pa.Array:
    """UTC timestamps from microseconds since the epoch, null where ``missing``."""
    return pa.array(moments.astype(np.int64), type=pa.timestamp("us", tz="UTC"), mask=missing)


def date_array(days: Array, missing: Array | None = None) -> pa.Array:
    """Dates from days since the epoch, null where ``missing``."""
    return pa.array(days.astype(np.int32), type=pa.date32(), mask=missing)


def uuid_array(rng: np.random.Generator, count: int) -> pa.Array:
    """Random version-4 UUIDs in canonical text, built as one byte buffer."""
    raw = rng.integers(0, 256, size=(count, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    text = np.full((count, 36), ord("-"), np.uint8)
    # In slices, so that the hex digits of millions of ids are never all in memory at once.
    for first in range(0, count, _UUID_SLICE):
        chunk = raw[first : first + _UUID_SLICE]
        hexed = np.empty((len(chunk), 32), np.uint8)
        hexed[:, 0::2] = digits[chunk >> 4]
        hexed[:, 1::2] = digits[chunk & 0x0F]
        rows = text[first : first + _UUID_SLICE]
        for start, end, source in ((0, 8, 0), (9, 13, 8), (14, 18, 12), (19, 23, 16), (24, 36, 20)):
            rows[:, start:end] = hexed[:, source : source + end - start]
    offsets = np.arange(0, 36 * (count + 1), 36, dtype=np.int32)
    # The buffers wrap the numpy memory without a copy.
    return pa.Array.from_buffers(
        pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(text)]
    )
