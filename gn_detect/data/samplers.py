"""Samplers and loaders: seedable, resumable, aspect-ratio-grouped, sharded across ranks.

Training uses iterations, not epochs (Detectron style), so the train batch sampler is an
endless stream of epochs. Everything about epoch e (shuffle, shard, grouping, per-item
augmentation seeds) is a pure function of (seed, e), which makes the position (epoch, index)
all there is to save for an exact resume.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from .collate import collate


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    # SeedSequence mixes (seed, epoch) well: nearby seeds/epochs give unrelated streams
    state = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class TrainBatchSampler(Sampler[list[Any]]):
    """Shuffled, sharded, aspect-ratio-grouped batches; endless (or one epoch per iter()).

    Per epoch (like DistributedSampler): one permutation of all images from (seed, epoch),
    padded with repeats from its start to a multiple of world_size, and rank r takes
    positions r, r + world_size, ... Every rank therefore has the same number of items and
    batches, and shards are disjoint apart from the padding repeats.

    Grouping (like detectron2's AspectRatioGroupedDataset): walking its shard, a rank puts
    each image into a landscape (w >= h) or portrait bucket and emits a batch when a bucket is
    full. At the end of the epoch leftovers of both buckets are batched together (the only
    mixed batches), the last one completed with images from the start of the shard, so each
    epoch has exactly ceil(shard / batch_size) batches on every rank.

    Yields lists of (index, item_seed) when yield_seeds (the dataset seeds the item's random
    transform with item_seed), else lists of indices.

    Resume: `state_dict()` is the position of the next batch this sampler will yield. A
    DataLoader with workers prefetches, so the sampler runs ahead of the training loop; save
    the trainer's iteration and restore with `set_iteration(it)` (or `start_iter=` of
    build_train_loader) to resume exactly.
    """

    def __init__(
        self,
        aspect_ratios: Sequence[float] | np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        aspect_grouping: bool = True,
        shuffle: bool = True,
        infinite: bool = True,
        yield_seeds: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.aspect_ratios = np.asarray(aspect_ratios, dtype=np.float64).reshape(-1)
        self.num_images = len(self.aspect_ratios)
        if self.num_images == 0:
            raise ValueError("TrainBatchSampler needs at least one image")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.aspect_grouping = aspect_grouping
        self.shuffle = shuffle
        self.infinite = infinite
        self.yield_seeds = yield_seeds
        self.shard_size = -(-self.num_images // self.world_size)  # ceil
        self.batches_per_epoch = -(-self.shard_size // self.batch_size)
        self.epoch = 0
        self.index = 0  # batch index inside self.epoch of the next batch to yield
        self._cache: tuple[int, list[list[Any]]] | None = None

    # ----------------------------------------------------------- epoch content

    def shard(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(image indices, item seeds) of this rank's shard for `epoch`, in stream order."""
        g = _epoch_generator(self.seed, epoch)
        n, ws = self.num_images, self.world_size
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        total = self.shard_size * ws
        if total > n:  # pad with repeats from the start, as DistributedSampler does
            order = order.repeat(-(-total // n))[:total]
        seeds = torch.randint(0, 2**62, (total,), generator=g, dtype=torch.int64)
        return order[self.rank :: ws].numpy(), seeds[self.rank :: ws].numpy()

    def epoch_batches(self, epoch: int) -> list[list[Any]]:
        """All batches of this rank for `epoch` (cached for the current epoch)."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        idx, seeds = self.shard(epoch)
        bs = self.batch_size
        pos = np.arange(len(idx))
        if self.aspect_grouping:
            portrait = self.aspect_ratios[idx] < 1.0
            full: list[np.ndarray] = []
            left: list[np.ndarray] = []
            for bucket in (pos[~portrait], pos[portrait]):
                k = len(bucket) // bs * bs
                full.extend(bucket[:k].reshape(-1, bs))
                left.append(bucket[k:])
            # a streaming grouper emits a batch when its last item arrives: keep that order
            full.sort(key=lambda b: int(b[-1]))
            rest = np.sort(np.concatenate(left))
        else:
            k = len(pos) // bs * bs
            full = list(pos[:k].reshape(-1, bs))
            rest = pos[k:]
        if len(rest):
            pad = (-len(rest)) % bs
            rest = np.concatenate([rest, np.resize(pos, pad)])  # wrap to the shard's start
            full.extend(rest.reshape(-1, bs))
        assert len(full) == self.batches_per_epoch
        if self.yield_seeds:
            batches = [[(int(idx[p]), int(seeds[p])) for p in b] for b in full]
        else:
            batches = [[int(idx[p]) for p in b] for b in full]
        self._cache = (epoch, batches)
        return batches

    # ----------------------------------------------------------- iteration

    def __iter__(self) -> Iterator[list[Any]]:
        while True:
            batches = self.epoch_batches(self.epoch)
            while self.index < len(batches):
                batch = batches[self.index]
                self.index += 1
                yield batch
            self.epoch, self.index = self.epoch + 1, 0
            if not self.infinite:
                return

    def __len__(self) -> int:
        if self.infinite:
            raise TypeError("an infinite TrainBatchSampler has no length; see batches_per_epoch")
        return self.batches_per_epoch

    # ----------------------------------------------------------- resume

    def state_at(self, iteration: int) -> dict[str, int]:
        """The state after `iteration` batches since epoch 0 (what a trainer at that iteration needs)."""
        return {"epoch": iteration // self.batches_per_epoch, "index": iteration % self.batches_per_epoch,
                "seed": self.seed}

    def set_iteration(self, iteration: int) -> None:
        self.load_state_dict(self.state_at(iteration))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed,
                "num_images": self.num_images, "batch_size": self.batch_size,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if "seed" in state and int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']} but this sampler uses {self.seed}")
        for key in ("num_images", "batch_size", "world_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(f"sampler state was saved with {key}={state[key]}, now {getattr(self, key)}; "
                                 f"the position would not mean the same thing")
        index = int(state["index"])
        if not 0 <= index <= self.batches_per_epoch:
            raise ValueError(f"index {index} out of range for {self.batches_per_epoch} batches per epoch")
        self.epoch, self.index = int(state["epoch"]), index


class InferenceSampler(Sampler[int]):
    """Rank r gets the contiguous slice [N*r//W, N*(r+1)//W): no padding, no duplicates, so
    every image is evaluated exactly once over all ranks (slices differ by at most one)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.begin = size * rank // world_size
        self.end = size * (rank + 1) // world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.begin, self.end))

    def __len__(self) -> int:
        return self.end - self.begin


def build_train_loader(
    dataset: Any,
    ims_per_device: int,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    aspect_grouping: bool = True,
    num_workers: int = 0,
    start_iter: int = 0,
    size_divisibility: int,
    pin_memory: bool = False,
    buckets: Sequence[tuple[int, int]] | None = None,
    worker_init_fn: Callable[[int], None] | None = None,
) -> DataLoader:
    """Endless training loader; batch i (counting from iteration 0) depends only on (seed, i).

    `loader.batch_sampler` is the TrainBatchSampler (state_dict / set_iteration). ``buckets``
    pads every batch to one of a few shapes (see collate); ``worker_init_fn`` runs in each
    loader worker.
    """
    ratios = getattr(dataset, "aspect_ratios", None)
    if ratios is None:
        ratios = np.ones(len(dataset))
    sampler = TrainBatchSampler(ratios, ims_per_device, seed=seed, rank=rank, world_size=world_size,
                                aspect_grouping=aspect_grouping)
    sampler.set_iteration(start_iter)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=functools.partial(collate, size_divisibility=size_divisibility, buckets=buckets),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        worker_init_fn=worker_init_fn,
    )


def build_test_loader(
    dataset: Any,
    ims_per_device: int = 1,
    *,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    size_divisibility: int,
    buckets: Sequence[tuple[int, int]] | None = None,
    worker_init_fn: Callable[[int], None] | None = None,
) -> DataLoader:
    """Finite, in-order loader over this rank's slice (see InferenceSampler)."""
    sampler = InferenceSampler(len(dataset), rank, world_size)
    return DataLoader(
        dataset,
        batch_size=ims_per_device,
        sampler=sampler,
        shuffle=False,
        drop_last=False,
        collate_fn=functools.partial(collate, size_divisibility=size_divisibility, buckets=buckets),
        num_workers=num_workers,
        worker_init_fn=worker_init_fn,
    )
