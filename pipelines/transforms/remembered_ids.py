"""The event ids a de-duplication shard remembers, as sorted NumPy arrays in Beam state.

A chunk is a ``(4, n)`` ``uint64`` array, 32 bytes per id: the id's 16 UUID bytes as two
integers (``HI``, ``LO``), a 64-bit fingerprint of the first copy's content (to tell a
retry from a conflict), and when the id may be forgotten (``EXPIRES``, whole seconds
since the epoch). Chunks are sorted by ``HI``, so a look-up is a binary search over
contiguous integers. A shard's chunks live in three state cells, a small log-structured
merge so that neither a look-up nor a write touches every entry:

- ``recent``: one chunk per batch checked (a bag: adding writes only the new chunk);
- ``runs``: every ``MAX_CHUNKS`` recent chunks merged into one run (a bag);
- ``settled``: one large chunk, rewritten only when the runs have grown to half its
  size, and when expired entries are pruned.

Checking ``k`` ids against ``n`` remembered costs ``O(k · log n)`` NumPy work over at
most ``2 · MAX_CHUNKS + 1`` chunks.
"""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam
import numpy as np

__all__ = [
    "EXPIRES",
    "FINGERPRINT",
    "HI",
    "LO",
    "MAX_CHUNKS",
    "RememberedIdsCoder",
    "chunk_of",
    "find",
    "key_halves",
    "merge",
    "unexpired",
]

HI, LO, FINGERPRINT, EXPIRES = range(4)
BYTES_PER_ID = 32

MAX_CHUNKS = 4
"""Chunks per state cell before they are merged into one."""


class RememberedIdsCoder(beam.coders.Coder):
    """A chunk as its raw bytes; decoding is a zero-copy view."""

    def encode(self, value: np.ndarray) -> bytes:
        return np.ascontiguousarray(value, np.uint64).tobytes()

    def decode(self, encoded: bytes) -> np.ndarray:
        return np.frombuffer(encoded, np.uint64).reshape(4, -1)

    def is_deterministic(self) -> bool:
        return True


def key_halves(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """16-byte keys (``S16``) → their big-endian halves as native ``uint64`` (hi, lo)."""
    halves = np.frombuffer(keys.tobytes(), ">u8").reshape(-1, 2).astype(np.uint64)
    return halves[:, 0].copy(), halves[:, 1].copy()


def chunk_of(keys: np.ndarray, fingerprints: np.ndarray, expires: np.ndarray) -> np.ndarray:
    """A sorted chunk of distinct ``keys`` (``S16``) with their fingerprints and expiry seconds."""
    hi, lo = key_halves(keys)
    chunk = np.stack([hi, lo, fingerprints.astype(np.uint64), expires.astype(np.uint64)])
    return chunk[:, np.argsort(hi, kind="stable")]


def find(chunk: np.ndarray, hi: np.ndarray, lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(found, fingerprint)`` per key (given as halves): whether ``chunk`` holds it, and its fingerprint."""
    size = chunk.shape[1]
    if size == 0:
        return np.zeros(len(hi), bool), np.zeros(len(hi), np.uint64)
    chunk_hi = chunk[HI]
    positions = chunk_hi.searchsorted(hi)
    at = np.minimum(positions, size - 1)
    same_hi = (positions < size) & (chunk_hi[at] == hi)
    found = same_hi & (chunk[LO][at] == lo)
    # Ids that share the high half (rare, or made so on purpose): search their run whole.
    for index in np.flatnonzero(same_hi & ~found):
        end = chunk_hi.searchsorted(hi[index], side="right")
        hits = np.flatnonzero(chunk[LO][positions[index] : end] == lo[index])
        if len(hits):
            found[index] = True
            at[index] = positions[index] + hits[0]
    return found, np.where(found, chunk[FINGERPRINT][at], np.uint64(0))


def merge(chunks: Sequence[np.ndarray]) -> np.ndarray:
    """Disjoint chunks → one sorted chunk; the largest is copied once, not re-sorted."""
    nonempty = sorted((chunk for chunk in chunks if chunk.shape[1]), key=lambda chunk: chunk.shape[1])
    if not nonempty:
        return np.empty((4, 0), np.uint64)
    largest = nonempty.pop()
    if not nonempty:
        return largest
    rest = np.concatenate(nonempty, axis=1)
    rest = rest[:, np.argsort(rest[HI], kind="stable")]
    return np.insert(largest, largest[HI].searchsorted(rest[HI]), rest, axis=1)


def unexpired(chunk: np.ndarray, now_seconds: int) -> np.ndarray:
    """The entries of ``chunk`` that may not be forgotten yet at ``now_seconds``."""
    kept: np.ndarray = chunk[:, chunk[EXPIRES] > np.uint64(max(now_seconds, 0))]
    return kept
