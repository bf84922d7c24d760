"""Samplers: deterministic, resumable, grouped, sharded."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from gn_detect.data import InferenceSampler, TrainBatchSampler, build_dataset, build_test_loader, build_train_loader


def take(sampler: TrainBatchSampler, n: int) -> list:
    return list(itertools.islice(iter(sampler), n))


RATIOS = np.random.default_rng(0).choice([0.75, 1.0, 1.33], size=23)


def test_deterministic_and_seed_dependent() -> None:
    a = take(TrainBatchSampler(RATIOS, 4, seed=7), 20)
    b = take(TrainBatchSampler(RATIOS, 4, seed=7), 20)
    c = take(TrainBatchSampler(RATIOS, 4, seed=8), 20)
    assert a == b and a != c
    # item seeds differ between epochs even for the same image
    s = TrainBatchSampler(RATIOS, 4, seed=7)
    assert s.epoch_batches(0) != s.epoch_batches(1)


@pytest.mark.parametrize("consumed", [5, 6, 11, 17])
def test_resume_gives_same_next_batches(consumed: int) -> None:
    s = TrainBatchSampler(RATIOS, 4, seed=1)  # 6 batches per epoch: 11 and 17 cross epochs
    it = iter(s)
    for _ in range(consumed):
        next(it)
    state = s.state_dict()
    expected = [next(it) for _ in range(8)]
    r = TrainBatchSampler(RATIOS, 4, seed=1)
    r.load_state_dict(state)
    assert take(r, 8) == expected
    r2 = TrainBatchSampler(RATIOS, 4, seed=1)
    r2.set_iteration(consumed)
    assert take(r2, 8) == expected
    with pytest.raises(ValueError, match="seed"):
        TrainBatchSampler(RATIOS, 4, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size"):
        TrainBatchSampler(RATIOS, 3, seed=1).load_state_dict(state)


def test_epoch_covers_every_image_and_groups_by_aspect() -> None:
    s = TrainBatchSampler(RATIOS, 4, seed=3)
    batches = s.epoch_batches(0)
    assert len(batches) == s.batches_per_epoch == 6 and all(len(b) == 4 for b in batches)
    idx = [i for b in batches for i, _ in b]
    assert set(idx) == set(range(23)) and len(idx) == 24  # one repeat completes the last batch
    mixed = [b for b in batches if len({RATIOS[i] < 1 for i, _ in b}) > 1]
    assert len(mixed) <= 1 and (not mixed or mixed[0] is batches[-1] or mixed[0] in batches[-2:])


def test_no_grouping_and_finite_mode() -> None:
    s = TrainBatchSampler(RATIOS, 5, seed=0, aspect_grouping=False, infinite=False, yield_seeds=False)
    assert len(s) == 5
    first, second = list(s), list(s)
    assert len(first) == len(second) == 5 and first != second  # iter() = next epoch
    assert sorted(set(i for b in first for i in b)) == list(range(23))


@pytest.mark.parametrize("world_size,n", [(2, 23), (3, 23), (4, 10), (5, 3)])
def test_distributed_shards_disjoint_and_covering(world_size: int, n: int) -> None:
    ratios = RATIOS[:n]
    samplers = [TrainBatchSampler(ratios, 2, seed=5, rank=r, world_size=world_size) for r in range(world_size)]
    shards = [s.shard(0)[0] for s in samplers]
    assert len({len(x) for x in shards}) == 1  # equal sizes
    counts = Counter(int(i) for x in shards for i in x)
    assert set(counts) == set(range(n))
    pad = len(shards[0]) * world_size - n
    assert sum(counts.values()) - n == pad  # only the padding repeats
    if pad == 0:
        assert max(counts.values()) == 1  # disjoint
    # every rank yields the same number of batches (DDP needs that) and covers its shard
    for s, shard in zip(samplers, shards):
        b = s.epoch_batches(0)
        assert len(b) == samplers[0].batches_per_epoch
        assert {i for x in b for i, _ in x} == set(shard.tolist())


@pytest.mark.parametrize("world_size,n", [(1, 5), (3, 10), (4, 3), (2, 7)])
def test_inference_sampler_exactly_once(world_size: int, n: int) -> None:
    parts = [list(InferenceSampler(n, r, world_size)) for r in range(world_size)]
    assert sorted(i for p in parts for i in p) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_loaders_resume_exactly(shapes_root: Path) -> None:
    cfg = {"name": "shapes", "root": str(shapes_root), "min_size_train": [64, 80, 96], "max_size": 128,
           "min_size_test": 96, "synthetic": {"num_train": 24, "num_val": 8, "image_size": 96, "seed": 3}}
    ds = build_dataset(cfg, "train")
    loader = build_train_loader(ds, 3, seed=11, size_divisibility=128)
    full = list(itertools.islice(iter(loader), 9))
    resumed = list(itertools.islice(iter(build_train_loader(ds, 3, seed=11, start_iter=6, size_divisibility=128)), 3))
    for (ia, ta, sa), (ib, tb, sb) in zip(full[6:], resumed):
        assert sa == sb and torch.equal(ia, ib)
        assert [t["image_id"] for t in ta] == [t["image_id"] for t in tb]
        for x, y in zip(ta, tb):
            assert torch.equal(x["boxes"], y["boxes"]) and x["flipped"] == y["flipped"]
    assert ia.shape[-1] % 128 == 0 and ia.shape[-2] % 128 == 0
    # flips and scales actually vary across the stream
    assert len({t["flipped"] for _, ts, _ in full for t in ts}) == 2
    assert len({min(t["size"]) for _, ts, _ in full for t in ts}) > 1

    val = build_dataset(cfg, "val")
    seen = []
    for r in range(3):
        for images, targets, sizes in build_test_loader(val, 2, rank=r, world_size=3, size_divisibility=128):
            assert images.shape[0] == len(targets) == len(sizes)
            seen += [t["image_id"] for t in targets]
    assert sorted(seen) == sorted(val.image_ids)


def test_loader_with_workers_matches(shapes_root: Path) -> None:
    cfg = {"name": "shapes", "root": str(shapes_root), "min_size_train": [64, 96], "max_size": 128,
           "synthetic": {"num_train": 24, "num_val": 8, "image_size": 96, "seed": 3}}
    ds = build_dataset(cfg, "train")
    a = list(itertools.islice(iter(build_train_loader(ds, 2, seed=4, size_divisibility=128)), 4))
    b = list(itertools.islice(iter(build_train_loader(ds, 2, seed=4, num_workers=2, size_divisibility=128)), 4))
    for (ia, ta, _), (ib, tb, _) in zip(a, b):
        assert torch.equal(ia, ib) and [t["image_id"] for t in ta] == [t["image_id"] for t in tb]
