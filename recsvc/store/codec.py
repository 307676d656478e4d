"""Compact binary encodings of what the feature store holds (no JSON for bulk data).

Item indexes of ranked lists take as few bits as the catalogue needs (`index_bits`, bit-packed;
byte widths 1-4 are also readable), seen items are gaps in LEB128 varints; scores of a ranked list are quantised affinely between the list's lowest and
highest score (uint8 by default: 255 steps, order preserved; uint16, float16 and float32 are
available). Encoders for many users work on whole batches with numpy; decoders are per record.

User record (one per user per version; `encode_user_records` / `decode_user_record`):

    u8 RECORD_FORMAT, then sections until the end, each `u8 tag, varint length, payload`:
      b"C" candidates   scored list (below), best first
      b"S" seen         u8 width, varint n, n indexes ascending
      b"F" factors      u8 dtype code (FLOAT16 / FLOAT32), varint n, n values
      b"G" segment      u8 len + utf-8 segment, i32 cluster, f32 recency_days, f32 frequency,
                        f32 monetary, u8 r, u8 f, u8 m
      b"B" buy-again    i64 trained_at, f32 horizon_days, varint n, u8 width, n indexes, then
                        n-value arrays: f32 due_score, i64 next_due, f32 interval_days,
                        i32 count, i64 last, f32 sd_days, f32 confidence
    Unknown tags are skipped, so readers survive new sections.

Scored list: `u8 index code, u8 score code, varint n, indexes, scores`. The index code is
BITS | b (indexes bit-packed at b = ceil(log2 n_items) bits each, 17 for 100k items) or a byte
width 1-4. The scores are, by score code: U8/U16 `f32 low, f32 high, n quantised`; F16/F32
`n values`.

Other values: `encode_array` (a .npy image), `encode_strings` (u32 count, u32 offsets, utf-8),
`encode_event` (recent events), `encode_item_update` (item-metadata overrides).

Pure functions; no I/O.
"""

from __future__ import annotations

import io
import math
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsvc.buyagain import BuyAgainLists
from recsvc.errors import BundleFormatError
from recsvc.store.base import RecentEvent, UserFeatures, UserSegment

RECORD_FORMAT = 1

SCORE_U8 = 1
SCORE_U16 = 2
SCORE_F16 = 3
SCORE_F32 = 4
SCORE_CODES = {"u8": SCORE_U8, "u16": SCORE_U16, "f16": SCORE_F16, "f32": SCORE_F32}
_SCORE_DTYPES: dict[int, np.dtype[Any]] = {
    SCORE_U8: np.dtype("u1"),
    SCORE_U16: np.dtype("<u2"),
    SCORE_F16: np.dtype("<f2"),
    SCORE_F32: np.dtype("<f4"),
}

FLOAT16 = 1
FLOAT32 = 2

BITS = 0x80  # index code flag: indexes bit-packed, low bits = bits per index

TAG_CANDIDATES = ord("C")
TAG_SEEN = ord("S")
TAG_FACTORS = ord("F")
TAG_SEGMENT = ord("G")
TAG_BUYAGAIN = ord("B")

_SEGMENT_TAIL = struct.Struct("<ifffBBB")  # cluster, recency, frequency, monetary, r, f, m
_F32x2 = struct.Struct("<ff")
_BUYAGAIN_HEAD = struct.Struct("<qf")  # trained_at, horizon_days
_BUYAGAIN_ARRAYS = (
    ("due_score", "<f4"),
    ("next_due", "<i8"),
    ("interval_days", "<f4"),
    ("count", "<i4"),
    ("last", "<i8"),
    ("sd_days", "<f4"),
    ("confidence", "<f4"),
)
# A recent event: marker, epoch seconds, item id length; then the item id and the event type
# (utf-8). Events name the item by id, not by index: indexes change from version to version.
# The marker (int32 -1) tells these records from the index-based ones of earlier releases,
# which began with a non-negative int32 item index and are ignored (they expire in a day).
_EVENT_MARKER = b"\xff\xff\xff\xff"
_EVENT = struct.Struct("<4sdH")


def index_bits(n_items: int) -> int:
    """Bits per item index for a catalogue of `n_items` (indexes 0 .. n_items - 1)."""
    return max(1, int(n_items - 1).bit_length())


def index_code(n_items: int, packed: bool = True) -> int:
    """The index code of a scored list: BITS | bits (bit-packed) or the byte width 1-4."""
    return BITS | index_bits(n_items) if packed else index_width(n_items)


def index_width(n_items: int) -> int:
    """Bytes per item index for a catalogue of `n_items` (indexes 0 .. n_items - 1)."""
    if n_items <= 1 << 8:
        return 1
    if n_items <= 1 << 16:
        return 2
    if n_items <= 1 << 24:
        return 3
    return 4


# -- varints ---------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    if value < len(_SMALL_VARINTS):
        return _SMALL_VARINTS[value]
    return _varint_slow(value)


def _varint_slow(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SMALL_VARINTS = [_varint_slow(i) for i in range(1 << 14)]


def _read_varint(data: memoryview | bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise BundleFormatError("store record truncated (varint)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


# -- item indexes ----------------------------------------------------------------------------


def pack_indexes(indexes: np.ndarray, width: int) -> np.ndarray:
    """uint8 array (..., n * width): little-endian indexes truncated to `width` bytes."""
    values = np.ascontiguousarray(indexes, dtype="<u4")
    raw = values.view(np.uint8).reshape(*values.shape, 4)[..., :width]
    return np.ascontiguousarray(raw).reshape(*values.shape[:-1], values.shape[-1] * width)


def unpack_indexes(data: memoryview | bytes, n: int, width: int) -> np.ndarray:
    """int32 indexes from `n * width` little-endian bytes."""
    raw = np.frombuffer(data, dtype=np.uint8, count=n * width)
    if width == 4:
        return raw.view("<u4").astype(np.int32)
    if width == 2:
        return raw.view("<u2").astype(np.int32)
    if width == 1:
        return raw.astype(np.int32)
    wide = np.zeros((n, 4), dtype=np.uint8)
    wide[:, :width] = raw.reshape(n, width)
    return wide.view("<u4").reshape(n).astype(np.int32)


# -- ascending index sets: gaps as LEB128 varints -------------------------------------------

SEEN_DELTA = 0x80  # seen-section code for delta varints (1-4: fixed width)


def delta_varints(indptr: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encode each CSR row's ascending indexes as gaps in LEB128, all rows at once.

    Returns (byte stream uint8, row byte offsets int64 of length rows + 1).
    """
    indptr = np.asarray(indptr, dtype=np.int64)
    values = np.asarray(indices, dtype=np.int64)
    gaps = values.copy()
    if len(values):
        gaps[1:] = values[1:] - values[:-1]
        starts = indptr[:-1][np.diff(indptr) > 0]
        gaps[starts] = values[starts]  # each row starts from an absolute index
    if (gaps < 0).any():
        raise ValueError("indexes must be ascending within each row")
    groups = np.stack([(gaps >> (7 * k)) & 0x7F for k in range(5)], axis=1)
    n_bytes = np.ones(len(gaps), dtype=np.int64)
    for k in range(1, 5):
        n_bytes += gaps >= (1 << (7 * k))
    present = np.arange(5)[None, :] < n_bytes[:, None]
    more = np.arange(5)[None, :] < (n_bytes - 1)[:, None]
    stream = (groups | (more.astype(np.int64) << 7))[present].astype(np.uint8)
    ends = np.concatenate([[0], np.cumsum(n_bytes)])
    return stream, ends[indptr]


def undelta_varints(data: memoryview | bytes, n: int) -> np.ndarray:
    """int32 ascending indexes from `n` LEB128 gaps."""
    if n == 0:
        return np.zeros(0, dtype=np.int32)
    raw = np.frombuffer(data, dtype=np.uint8)
    last = np.flatnonzero(raw < 0x80)[:n]
    if len(last) < n:
        raise BundleFormatError("store record truncated (seen items)")
    raw = raw[: last[-1] + 1].astype(np.int64)
    starts = np.concatenate([[0], last[:-1] + 1])
    value_of = np.repeat(np.arange(n), last - starts + 1)
    shift = 7 * (np.arange(len(raw)) - starts[value_of])
    gaps = np.add.reduceat((raw & 0x7F) << shift, starts)
    return np.cumsum(gaps).astype(np.int32)


def pack_index_rows(indexes: np.ndarray, code: int) -> np.ndarray:
    """uint8 array (rows, bytes): each row's indexes packed by `code` (bits or byte width).

    With bit packing (little-endian bit order) the first n entries of a row are its first
    ceil(n * bits / 8) bytes, so a row's prefix can be cut out byte-wise.
    """
    if not code & BITS:
        return pack_indexes(indexes, code)
    bits = code & ~BITS
    values = np.ascontiguousarray(indexes, dtype=np.uint64)
    rows, cols = values.shape
    size = -(-cols * bits // 8)
    if bits < 8 or bits > 56:  # go through single bits (tiny or huge catalogues)
        expanded = ((values[:, :, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
        return np.packbits(expanded.reshape(rows, cols * bits), axis=1, bitorder="little")
    # Every 8 values fill exactly `bits` bytes, and value r of a group of 8 always starts at
    # the same bit of its group: build each group's bytes from 8 shifted columns (bits of
    # neighbouring values never overlap, so adding is or-ing).
    groups = -(-cols // 8)
    padded = np.zeros((rows, groups * 8), dtype=np.uint64)
    padded[:, :cols] = values
    padded = padded.reshape(rows, groups, 8)
    out = np.zeros((rows, groups, bits + 5), dtype=np.uint64)
    for r in range(8):
        first, shift = divmod(r * bits, 8)
        shifted = padded[:, :, r] << np.uint64(shift)
        for k in range((bits + shift + 7) // 8):
            out[:, :, first + k] += (shifted >> np.uint64(8 * k)) & np.uint64(0xFF)
    return out[:, :, :bits].astype(np.uint8).reshape(rows, groups * bits)[:, :size]


def index_bytes(n: int, code: int) -> int:
    """Bytes taken by n indexes under `code`."""
    return -(-n * (code & ~BITS) // 8) if code & BITS else n * code


def unpack_index_code(data: memoryview | bytes, n: int, code: int) -> np.ndarray:
    """int32 indexes packed by `code`."""
    if not code & BITS:
        return unpack_indexes(data, n, code)
    bits = code & ~BITS
    raw = np.frombuffer(data, dtype=np.uint8, count=index_bytes(n, code))
    flags = np.unpackbits(raw, count=n * bits, bitorder="little").reshape(n, bits)
    weights = (np.uint32(1) << np.arange(bits, dtype=np.uint32)).astype(np.int64)
    return (flags.astype(np.int64) @ weights).astype(np.int32)


# -- scores ----------------------------------------------------------------------------------


def _quantise(scores: np.ndarray, valid: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: (low, high, q) with q = round((s - low) / (high - low) * levels)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape[1] == 0:
        zeros = np.zeros(scores.shape[0], dtype=np.float32)
        return zeros, zeros, np.zeros(scores.shape)
    finite = valid & np.isfinite(scores)
    low = np.where(finite, scores, np.inf).min(axis=1)
    high = np.where(finite, scores, -np.inf).max(axis=1)
    low[~np.isfinite(low)] = 0.0
    high[~np.isfinite(high)] = 0.0
    # round the range to float32 first, so decoding with the stored float32 bounds matches
    low32 = low.astype(np.float32)
    high32 = high.astype(np.float32)
    span = high32.astype(np.float64) - low32.astype(np.float64)
    span[span <= 0] = 1.0
    scaled = (np.where(finite, scores, low[:, None]) - low32[:, None]) / span[:, None] * levels
    q = np.clip(np.rint(scaled), 0, levels)
    return low32, high32, q


def dequantise(low: float, high: float, q: np.ndarray, levels: int) -> np.ndarray:
    return (low + q.astype(np.float64) * ((high - low) / levels)).astype(np.float32)


def score_tolerance(low: float, high: float, code: int) -> float:
    """Largest decoding error of one score under `code` (for tests and documentation)."""
    if code == SCORE_U8:
        return (high - low) / 510 + 1e-6 * max(abs(low), abs(high), 1.0)
    if code == SCORE_U16:
        return (high - low) / 131070 + 1e-6 * max(abs(low), abs(high), 1.0)
    if code == SCORE_F16:  # scores beyond +-65504 are clipped to it
        return max(abs(low), abs(high)) * 1e-3 + 1e-7
    return 0.0


@dataclass(frozen=True)
class _ScoredBatch:
    """Encoded pieces of many scored lists (one row each)."""

    heads: list[bytes]  # index code, score code, varint n
    index_bytes: np.ndarray  # (rows, packed bytes) uint8
    score_heads: list[bytes]  # low/high for quantised codes, else b""
    score_bytes: np.ndarray  # (rows, N * bytes per score) uint8
    lengths: np.ndarray  # items per row
    width: int  # index code
    score_size: int

    def row(self, i: int) -> bytes:
        n = int(self.lengths[i])
        return b"".join(
            (
                self.heads[i],
                self.index_bytes[i, : index_bytes(n, self.width)].tobytes(),
                self.score_heads[i],
                self.score_bytes[i, : n * self.score_size].tobytes(),
            )
        )


def _encode_scored_batch(
    indexes: np.ndarray, scores: np.ndarray, lengths: np.ndarray, width: int, code: int
) -> _ScoredBatch:
    """Rows of (indexes, scores); row i keeps its first lengths[i] entries."""
    rows, cols = indexes.shape
    valid = np.arange(cols)[None, :] < lengths[:, None]
    packed = pack_index_rows(np.where(valid, indexes, 0), width)
    heads = [bytes((width, code)) + _varint(int(n)) for n in lengths.tolist()]
    if code not in _SCORE_DTYPES:
        raise ValueError(f"unknown score code {code}")
    dtype = _SCORE_DTYPES[code]
    if code in (SCORE_U8, SCORE_U16):
        low, high, q = _quantise(scores, valid, 255 if code == SCORE_U8 else 65535)
        score_bytes = np.ascontiguousarray(q.astype(dtype)).view(np.uint8).reshape(rows, -1)
        score_heads = [_F32x2.pack(lo, hi) for lo, hi in zip(low.tolist(), high.tolist(), strict=True)]
    else:
        limit = 65504.0 if code == SCORE_F16 else float(np.finfo(np.float32).max)
        values = np.clip(np.where(valid, scores, 0), -limit, limit).astype(dtype)  # no inf
        score_bytes = np.ascontiguousarray(values).view(np.uint8).reshape(rows, -1)
        score_heads = [b""] * rows
    return _ScoredBatch(heads, packed, score_heads, score_bytes, lengths, width, dtype.itemsize)


def encode_scored_list(indexes: np.ndarray, scores: np.ndarray, width: int, code: int = SCORE_U8) -> bytes:
    """One ranked list (stops at the first negative index: -1 padding).

    width: index code (`index_code(n_items)`, or a byte width 1-4).
    """
    indexes = np.asarray(indexes, dtype=np.int64).reshape(-1)
    negative = np.flatnonzero(indexes < 0)
    n = int(negative[0]) if len(negative) else len(indexes)
    batch = _encode_scored_batch(
        indexes[None, :n], np.asarray(scores, dtype=np.float64).reshape(1, -1)[:, :n],
        np.array([n]), width, code,
    )
    return batch.row(0)


def decode_scored_list(data: memoryview | bytes, pos: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(indexes int32, scores float32, position after the list)."""
    data = memoryview(data)
    width, code = data[pos], data[pos + 1]
    n, pos = _read_varint(data, pos + 2)
    size = index_bytes(n, width)
    indexes = unpack_index_code(data[pos : pos + size], n, width)
    pos += size
    if code not in _SCORE_DTYPES:
        raise BundleFormatError(f"store record: unknown score code {code}")
    dtype = _SCORE_DTYPES[code]
    if code in (SCORE_U8, SCORE_U16):
        low, high = _F32x2.unpack_from(data, pos)
        pos += 8
        q = np.frombuffer(data[pos : pos + n * dtype.itemsize], dtype=dtype, count=n)
        scores = dequantise(low, high, q, 255 if code == SCORE_U8 else 65535)
    else:
        raw = np.frombuffer(data[pos : pos + n * dtype.itemsize], dtype=dtype, count=n)
        scores = raw.astype(np.float32)
    pos += n * dtype.itemsize
    return indexes, scores, pos


# -- user records ----------------------------------------------------------------------------


@dataclass
class UserBatch:
    """The per-user components of a batch of users (rows aligned), ready to encode.

    Any component may be None (the bundle lacks it).
    """

    candidates: np.ndarray | None = None  # (rows, N) int32, -1 padded
    candidate_scores: np.ndarray | None = None  # (rows, N) float32
    seen: sp.csr_matrix | None = None  # rows x items
    factors: np.ndarray | None = None  # (rows, f) float32
    segments: Sequence[UserSegment | None] | None = None
    buyagain: BuyAgainLists | None = None  # one row per batch row

    @property
    def rows(self) -> int:
        for value in (self.candidates, self.factors, self.seen):
            if value is not None:
                return int(value.shape[0])
        if self.buyagain is not None:
            return self.buyagain.n_users
        return len(self.segments) if self.segments is not None else 0


def _section(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


def _segment_payload(segment: UserSegment) -> bytes:
    name = segment.segment.encode("utf-8")[:255]
    return (
        bytes((len(name),))
        + name
        + _SEGMENT_TAIL.pack(
            int(segment.cluster),
            float(segment.recency_days),
            float(segment.frequency),
            float(segment.monetary),
            int(segment.r) & 0xFF,
            int(segment.f) & 0xFF,
            int(segment.m) & 0xFF,
        )
    )


def encode_user_records(
    batch: UserBatch, n_items: int, score_code: int = SCORE_U8, factor_code: int = FLOAT16
) -> list[bytes]:
    """One record per row of `batch` (see the module docstring for the layout)."""
    rows = batch.rows
    width = index_code(n_items)
    parts: list[list[bytes]] = [[bytes((RECORD_FORMAT,))] for _ in range(rows)]
    if batch.candidates is not None and batch.candidate_scores is not None:
        indexes = np.asarray(batch.candidates)
        lengths = _leading_valid(indexes)
        scored = _encode_scored_batch(indexes, np.asarray(batch.candidate_scores), lengths, width, score_code)
        for i in range(rows):
            parts[i].append(_section(TAG_CANDIDATES, scored.row(i)))
    if batch.seen is not None:
        seen = sp.csr_matrix(batch.seen)
        seen.sort_indices()
        stream, offsets = delta_varints(seen.indptr, seen.indices)
        counts = np.diff(seen.indptr).tolist()
        for i in range(rows):
            payload = bytes((SEEN_DELTA,)) + _varint(counts[i]) + stream[offsets[i] : offsets[i + 1]].tobytes()
            parts[i].append(_section(TAG_SEEN, payload))
    if batch.factors is not None:
        dtype = np.dtype("<f2") if factor_code == FLOAT16 else np.dtype("<f4")
        values = np.ascontiguousarray(np.asarray(batch.factors).astype(dtype))
        head = bytes((factor_code,)) + _varint(values.shape[1])
        for i in range(rows):
            parts[i].append(_section(TAG_FACTORS, head + values[i].tobytes()))
    if batch.segments is not None:
        for i, segment in enumerate(batch.segments):
            if segment is not None:
                parts[i].append(_section(TAG_SEGMENT, _segment_payload(segment)))
    if batch.buyagain is not None:
        lists = batch.buyagain
        head = _BUYAGAIN_HEAD.pack(int(lists.trained_at), float(lists.horizon_days))
        indptr = np.asarray(lists.indptr)
        byte_width = index_width(n_items)
        packed = pack_indexes(np.asarray(lists.items)[None, :], byte_width)[0]
        columns = [np.ascontiguousarray(np.asarray(getattr(lists, name)), dtype=dtype)
                   for name, dtype in _BUYAGAIN_ARRAYS]
        for i in range(rows):
            start, end = int(indptr[i]), int(indptr[i + 1])
            if end == start:
                continue
            pieces = [head, _varint(end - start), bytes((byte_width,)),
                      packed[start * byte_width : end * byte_width].tobytes()]
            pieces += [column[start:end].tobytes() for column in columns]
            parts[i].append(_section(TAG_BUYAGAIN, b"".join(pieces)))
    return [b"".join(p) for p in parts]


def section_sizes(data: bytes) -> dict[str, int]:
    """Bytes per section of a user record (tag letter -> bytes incl. its header), for reports."""
    view = memoryview(data)
    sizes = {"header": 1}
    pos = 1
    while pos < len(view):
        tag = chr(view[pos])
        length, start = _read_varint(view, pos + 1)
        sizes[tag] = sizes.get(tag, 0) + start - pos + length
        pos = start + length
    return sizes


def _decode_buyagain(body: memoryview) -> BuyAgainLists:
    trained_at, horizon_days = _BUYAGAIN_HEAD.unpack_from(body, 0)
    n, pos = _read_varint(body, _BUYAGAIN_HEAD.size)
    width = body[pos]
    items = unpack_indexes(body[pos + 1 : pos + 1 + n * width], n, width)
    pos += 1 + n * width
    arrays: dict[str, np.ndarray] = {}
    for name, dtype in _BUYAGAIN_ARRAYS:
        size = np.dtype(dtype).itemsize * n
        arrays[name] = np.frombuffer(body[pos : pos + size], dtype=dtype, count=n).astype(
            np.dtype(dtype).newbyteorder("=")
        )
        pos += size
    return BuyAgainLists(
        indptr=np.array([0, n], dtype=np.int64),
        items=items,
        trained_at=int(trained_at),
        horizon_days=float(horizon_days),
        **arrays,
    )


def _leading_valid(indexes: np.ndarray) -> np.ndarray:
    """Per row: how many entries come before the first negative one."""
    negative = indexes < 0
    first = np.argmax(negative, axis=1)
    lengths: np.ndarray = np.where(negative.any(axis=1), first, indexes.shape[1]).astype(np.int64)
    return lengths


def decode_user_record(data: bytes, user_id: str) -> UserFeatures:
    """The UserFeatures in one record (recent events are not part of it)."""
    view = memoryview(data)
    if not view or view[0] != RECORD_FORMAT:
        raise BundleFormatError(
            f"store record format {view[0] if view else None!r} is not {RECORD_FORMAT}; "
            "republish with this recsvc"
        )
    pos = 1
    empty = np.zeros(0, dtype=np.int32)
    candidates, scores, seen = empty, np.zeros(0, dtype=np.float32), empty
    factors: np.ndarray | None = None
    segment: UserSegment | None = None
    buyagain: BuyAgainLists | None = None
    while pos < len(view):
        tag = view[pos]
        length, pos = _read_varint(view, pos + 1)
        body = view[pos : pos + length]
        pos += length
        if tag == TAG_CANDIDATES:
            candidates, scores, _ = decode_scored_list(body)
        elif tag == TAG_SEEN:
            n, start = _read_varint(body, 1)
            if body[0] == SEEN_DELTA:
                seen = undelta_varints(body[start:], n)
            else:
                seen = unpack_indexes(body[start:], n, body[0])
        elif tag == TAG_FACTORS:
            n, start = _read_varint(body, 1)
            dtype = np.dtype("<f2") if body[0] == FLOAT16 else np.dtype("<f4")
            factors = np.frombuffer(body[start:], dtype=dtype, count=n).astype(np.float32)
        elif tag == TAG_SEGMENT:
            size = body[0]
            # interned: a server caching many users holds each segment name once
            name = sys.intern(bytes(body[1 : 1 + size]).decode("utf-8", "replace"))
            cluster, recency, frequency, monetary, r, f, m = _SEGMENT_TAIL.unpack_from(body, 1 + size)
            segment = UserSegment(name, cluster, recency, frequency, monetary, r, f, m)
        elif tag == TAG_BUYAGAIN:
            buyagain = _decode_buyagain(body)
    return UserFeatures(user_id, candidates, scores, seen, factors, segment, buyagain)


# -- arrays, strings, events, item updates ---------------------------------------------------


def encode_array(values: np.ndarray) -> bytes:
    """A numeric array as a .npy image (self-describing dtype and shape; no pickles)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(values), allow_pickle=False)
    return buffer.getvalue()


def decode_array(data: bytes) -> np.ndarray:
    values: np.ndarray = np.load(io.BytesIO(data), allow_pickle=False)
    return values


def encode_strings(values: Sequence[str]) -> bytes:
    """u32 count, (count + 1) u32 offsets, then the utf-8 bytes of every string."""
    encoded = [str(v).encode("utf-8", "surrogatepass") for v in values]
    offsets = np.zeros(len(encoded) + 1, dtype="<u8")
    offsets[1:] = np.cumsum([len(e) for e in encoded], dtype=np.uint64)
    if offsets[-1] >= 1 << 32:
        raise ValueError("string table larger than 4 GiB")
    return struct.pack("<I", len(encoded)) + offsets.astype("<u4").tobytes() + b"".join(encoded)


def decode_strings(data: bytes) -> list[str]:
    (count,) = struct.unpack_from("<I", data, 0)
    offsets = np.frombuffer(data, dtype="<u4", count=count + 1, offset=4).tolist()
    base = 4 + 4 * (count + 1)
    blob = data[base:]
    return [
        blob[offsets[i] : offsets[i + 1]].decode("utf-8", "surrogatepass") for i in range(count)
    ]


def encode_event(item_id: str, event_type: str, ts: float) -> bytes:
    item = item_id.encode("utf-8", "surrogatepass")
    if len(item) > 0xFFFF:
        raise ValueError("item id longer than 65535 bytes")
    return _EVENT.pack(_EVENT_MARKER, float(ts), len(item)) + item + event_type.encode("utf-8")


def decode_event(data: bytes) -> RecentEvent | None:
    """The event, or None for a record of the earlier index-based format (or a torn one)."""
    if len(data) < _EVENT.size or not data.startswith(_EVENT_MARKER):
        return None
    _, ts, length = _EVENT.unpack_from(data, 0)
    end = _EVENT.size + length
    if len(data) < end:
        return None
    return RecentEvent(
        item_id=data[_EVENT.size : end].decode("utf-8", "surrogatepass"),
        event_type=data[end:].decode("utf-8", "replace"),
        ts=ts,
    )


UPDATE_FIELDS = ("category", "price", "in_stock", "title")


@dataclass(frozen=True)
class ItemUpdate:
    """New metadata for one item (None: unchanged). Each field applies to versions older than
    when it was set: `field_ts` (per UPDATE_FIELDS), or `ts` for every field when None."""

    ts: float  # epoch seconds of the update (the newest field's, after a merge)
    category: str | None = None
    price: float | None = None  # NaN: price now unknown
    in_stock: bool | None = None
    title: str | None = None
    field_ts: tuple[float, float, float, float] | None = None

    def set_at(self, name: str) -> float:
        """When field `name` was set (epoch seconds)."""
        return self.ts if self.field_ts is None else self.field_ts[UPDATE_FIELDS.index(name)]

    def applies(self, name: str, created: float) -> bool:
        """Whether field `name` is set, and later than a version created at `created`."""
        return getattr(self, name) is not None and self.set_at(name) > created

    def merge(self, newer: ItemUpdate) -> ItemUpdate:
        """Fields `newer` sets replace ours and carry its time; the others keep their own, so
        an old override does not come back over a bundle trained after it."""
        values: dict[str, Any] = {}
        times: list[float] = []
        for name in UPDATE_FIELDS:
            value = getattr(newer, name)
            source = newer if value is not None else self
            values[name] = getattr(source, name)
            times.append(source.set_at(name))
        return ItemUpdate(ts=max(self.ts, newer.ts), field_ts=tuple(times), **values)  # type: ignore[arg-type]


_UPDATE_HEAD = struct.Struct("<dBfB")  # ts, flags, price, in_stock
_UPDATE_TIMES = struct.Struct("<4d")  # per-field times (flag 16), after the title


def encode_item_update(update: ItemUpdate) -> bytes:
    flags = (
        (update.category is not None)
        | (update.price is not None) << 1
        | (update.in_stock is not None) << 2
        | (update.title is not None) << 3
    )
    flags |= (update.field_ts is not None) << 4
    price = update.price if update.price is not None else math.nan
    head = _UPDATE_HEAD.pack(update.ts, flags, price, int(bool(update.in_stock)))
    category = (update.category or "").encode("utf-8")
    title = (update.title or "").encode("utf-8")
    times = _UPDATE_TIMES.pack(*update.field_ts) if update.field_ts is not None else b""
    return (head + struct.pack("<I", len(category)) + category + struct.pack("<I", len(title))
            + title + times)


def decode_item_update(data: bytes) -> ItemUpdate:
    ts, flags, price, in_stock = _UPDATE_HEAD.unpack_from(data, 0)
    pos = _UPDATE_HEAD.size
    (size,) = struct.unpack_from("<I", data, pos)
    category = data[pos + 4 : pos + 4 + size].decode("utf-8", "replace")
    pos += 4 + size
    (size,) = struct.unpack_from("<I", data, pos)
    title = data[pos + 4 : pos + 4 + size].decode("utf-8", "replace")
    pos += 4 + size
    times = _UPDATE_TIMES.unpack_from(data, pos) if flags & 16 else None
    return ItemUpdate(
        ts=ts,
        category=category if flags & 1 else None,
        price=float(price) if flags & 2 else None,
        in_stock=bool(in_stock) if flags & 4 else None,
        title=title if flags & 8 else None,
        field_ts=times,
    )
