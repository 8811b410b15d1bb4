"""The sorted chunks a de-duplication shard remembers ids in."""

from __future__ import annotations

import numpy as np

from pipelines.transforms.remembered_ids import (
    BYTES_PER_ID,
    EXPIRES,
    FINGERPRINT,
    HI,
    RememberedIdsCoder,
    chunk_of,
    find,
    key_halves,
    merge,
    unexpired,
)


def keys_from(*hex_ids: str) -> np.ndarray:
    return np.array([bytes.fromhex(h) for h in hex_ids], dtype="S16")


def random_keys(rng: np.random.Generator, count: int) -> np.ndarray:
    return np.frombuffer(rng.bytes(16 * count), "S16")


def test_a_chunk_finds_its_keys_and_their_fingerprints() -> None:
    rng = np.random.default_rng(7)
    keys = random_keys(rng, 1000)
    chunk = chunk_of(keys, np.arange(1000, dtype=np.uint64) + 1, np.full(1000, 60))
    assert chunk.shape == (4, 1000)
    assert (chunk[HI][1:] >= chunk[HI][:-1]).all()  # exact: uint64 compared as uint64
    queries = np.concatenate([keys[::3], random_keys(rng, 50)])
    found, fingerprints = find(chunk, *key_halves(queries))
    assert found.tolist() == [True] * len(keys[::3]) + [False] * 50
    assert fingerprints[: len(keys[::3])].tolist() == list(range(1, 1001, 3))
    assert fingerprints[len(keys[::3]) :].tolist() == [0] * 50


def test_keys_sharing_their_high_half_are_told_apart() -> None:
    high = "0b0d8d384c3e4b8a"
    stored = keys_from(high + "0000000000000003", high + "0000000000000001", "ff" * 16)
    chunk = chunk_of(stored, np.array([3, 1, 9], np.uint64), np.zeros(3))
    asked = keys_from(high + "0000000000000001", high + "0000000000000002", high + "0000000000000003")
    found, fingerprints = find(chunk, *key_halves(asked))
    assert found.tolist() == [True, False, True]
    assert fingerprints.tolist() == [1, 0, 3]


def test_merged_chunks_hold_every_entry_sorted() -> None:
    rng = np.random.default_rng(11)
    chunks = [
        chunk_of(random_keys(rng, size), np.zeros(size), np.full(size, size)) for size in (500, 3, 0, 40)
    ]
    merged = merge(chunks)
    assert merged.shape == (4, 543)
    assert (merged[HI][1:] >= merged[HI][:-1]).all()
    for chunk in chunks:
        assert find(merged, chunk[HI], chunk[1])[0].all()
    assert merge([]).shape == (4, 0)


def test_expired_entries_are_dropped_and_a_chunk_is_32_bytes_an_id() -> None:
    chunk = chunk_of(keys_from("01" * 16, "02" * 16), np.array([5, 6]), np.array([100, 160]))
    assert unexpired(chunk, 100)[FINGERPRINT].tolist() == [6]
    assert unexpired(chunk, 99)[EXPIRES].tolist() == [100, 160]
    coder = RememberedIdsCoder()
    encoded = coder.encode(chunk)
    assert len(encoded) == 2 * BYTES_PER_ID
    assert (coder.decode(encoded) == chunk).all()
