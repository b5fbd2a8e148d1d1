"""A mergeable percentile estimate: fixed logarithmic buckets (as DDSketch), so hours merge into days.

Any quantile is within RELATIVE_ERROR of the sample at rank floor(q * (n - 1)), whatever the data.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec

RELATIVE_ERROR = 0.01
_GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
_LOG_GAMMA = math.log(_GAMMA)
# Below this magnitude a value counts as zero: far under any metric's resolution.
_TINY = 1e-12


class Sketch(msgspec.Struct, array_like=True):
    """Counts per bucket; bucket i holds magnitudes in (gamma^(i-1), gamma^i]."""

    zero: int = 0
    pos: dict[int, int] = msgspec.field(default_factory=dict)
    neg: dict[int, int] = msgspec.field(default_factory=dict)

    def add(self, value: float) -> None:
        if -_TINY < value < _TINY:
            self.zero += 1
            return
        buckets = self.pos if value > 0 else self.neg
        index = math.ceil(math.log(abs(value)) / _LOG_GAMMA)
        buckets[index] = buckets.get(index, 0) + 1

    def add_all(self, values: Iterable[float]) -> None:
        """`add` each of `values` (the same, in one loop)."""
        pos, neg, log, ceil = self.pos, self.neg, math.log, math.ceil
        for value in values:
            if value >= _TINY:
                index = ceil(log(value) / _LOG_GAMMA)
                pos[index] = pos.get(index, 0) + 1
            elif value <= -_TINY:
                index = ceil(log(-value) / _LOG_GAMMA)
                neg[index] = neg.get(index, 0) + 1
            else:
                self.zero += 1

    def merge(self, other: Sketch) -> None:
        self.zero += other.zero
        for mine, theirs in ((self.pos, other.pos), (self.neg, other.neg)):
            for index, count in theirs.items():
                mine[index] = mine.get(index, 0) + count

    @property
    def count(self) -> int:
        return self.zero + sum(self.pos.values()) + sum(self.neg.values())

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1) estimate, None when empty."""
        total = self.count
        if total == 0:
            return None
        rank = math.floor(q * (total - 1))
        seen = 0
        for index in sorted(self.neg, reverse=True):
            seen += self.neg[index]
            if seen > rank:
                return -_value(index)
        seen += self.zero
        if seen > rank:
            return 0.0
        for index in sorted(self.pos):
            seen += self.pos[index]
            if seen > rank:
                return _value(index)
        return _value(max(self.pos)) if self.pos else 0.0


def _value(index: int) -> float:
    """The bucket's representative: at most RELATIVE_ERROR from anything in it."""
    return 2 * _GAMMA**index / (_GAMMA + 1)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Sketch)


def encode_sketch(sketch: Sketch) -> bytes:
    return _encoder.encode(sketch)


def decode_sketch(data: bytes) -> Sketch:
    return _decoder.decode(data)


def merged(blobs: Iterable[bytes]) -> Sketch:
    """One sketch from many stored ones."""
    total = Sketch()
    for blob in blobs:
        total.merge(decode_sketch(blob))
    return total
