"""Iteration-counted loading: epochs cut an endless stream of shuffled passes, the same for any
history, shared without overlap between ranks."""

from __future__ import annotations

from nat.engine import DistEnv, IterationSampler


def _epoch(sampler: IterationSampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_epochs_continue_a_stream_of_whole_passes() -> None:
    sampler = IterationSampler(length=10, iterations=2, batch_size=3, env=DistEnv(), seed=0)
    stream = [i for e in range(5) for i in _epoch(sampler, e)]  # 30 indices: 3 passes
    assert len(sampler) == 6
    assert all(sorted(stream[p * 10 : (p + 1) * 10]) == list(range(10)) for p in range(3))
    assert stream[:10] != stream[10:20]  # each pass its own order
    again = IterationSampler(length=10, iterations=2, batch_size=3, env=DistEnv(), seed=0)
    assert _epoch(again, 3) == stream[18:24]  # epoch 3 alone, as after a resume


def test_ranks_share_each_epoch_without_overlap() -> None:
    ranks = [IterationSampler(10, 2, 3, DistEnv(rank=r, world_size=2), seed=1) for r in range(2)]
    single = IterationSampler(10, 2, 6, DistEnv(), seed=1)
    parts = [_epoch(s, 1) for s in ranks]
    assert sorted(parts[0] + parts[1]) == sorted(_epoch(single, 1))
    assert parts[0] == _epoch(single, 1)[0::2]
