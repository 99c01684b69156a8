"""StreamSampler: deterministic, reshuffled per epoch, resumable, disjoint across ranks."""
from __future__ import annotations

import itertools

import pytest

from dataset.sampling import StreamSampler
from utils.errors import ConfigError


def take(sampler: StreamSampler, n: int) -> list[int]:
    return list(itertools.islice(iter(sampler), n))


def test_same_seed_gives_the_same_stream_and_another_seed_another():
    assert take(StreamSampler(17, seed=3), 60) == take(StreamSampler(17, seed=3), 60)
    assert take(StreamSampler(17, seed=3), 60) != take(StreamSampler(17, seed=4), 60)


def test_each_epoch_is_a_fresh_permutation():
    stream = take(StreamSampler(12, seed=0), 36)
    epochs = [stream[i:i + 12] for i in (0, 12, 24)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(12))
    assert len({tuple(epoch) for epoch in epochs}) == 3  # three epochs, three orders


@pytest.mark.parametrize("start", [0, 1, 11, 12, 30])
def test_start_offset_resumes_the_same_continuation(start):
    full = take(StreamSampler(12, seed=5), start + 25)
    assert take(StreamSampler(12, seed=5, start=start), 25) == full[start:]


def test_ranks_get_disjoint_parts_of_each_epoch():
    n, world = 23, 3
    per_rank = n // world
    streams = [take(StreamSampler(n, seed=1, rank=r, world_size=world), 2 * per_rank) for r in range(world)]
    for epoch in range(2):
        parts = [set(s[epoch * per_rank:(epoch + 1) * per_rank]) for s in streams]
        assert all(len(p) == per_rank for p in parts)
        assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])


def test_bad_rank_is_a_config_error():
    with pytest.raises(ConfigError, match="rank"):
        StreamSampler(10, seed=0, rank=2, world_size=2)
