"""A deterministic, resumable stream of prompt batches over a dataset.

Epoch ``e`` visits the items in the order ``permutation(seed, e)``; when an epoch
runs out mid-batch the batch continues with the next epoch's fresh shuffle. The
cursor (epoch, position) is all the state, so ``state_dict``/``load_state_dict``
resume exactly: the items drawn after a restore are the ones an uninterrupted
stream would have drawn. Batch sizes may vary between calls, as the online filter
refills a batch with however many prompts it still needs.

Deliberately left out: the filter's surplus buffer (the trainer owns it) and any
distributed sharding (every rank draws the same prompts; rollout splits them).
"""
from __future__ import annotations

from typing import Generic, Sequence, TypeVar

import numpy as np

T = TypeVar("T")


def compute_epoch_order(num_items: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Indices of epoch ``epoch``: a seeded permutation, independent of every other epoch."""
    if not shuffle:
        return np.arange(num_items)
    return np.random.default_rng([seed, epoch]).permutation(num_items)


class PromptStream(Generic[T]):
    def __init__(self, items: Sequence[T], *, batch_size: int, seed: int, shuffle: bool = True):
        if len(items) == 0:
            raise ValueError("PromptStream needs at least one item")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.items, self.batch_size, self.seed, self.shuffle = items, batch_size, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = compute_epoch_order(len(items), seed=seed, epoch=0, shuffle=shuffle)

    def next_batch(self, size: int | None = None) -> list[T]:
        """The next ``size`` items (default ``batch_size``), crossing epochs as needed."""
        size = self.batch_size if size is None else size
        if size < 0:
            raise ValueError(f"batch size must be >= 0, got {size}")
        batch = []
        while len(batch) < size:
            if self.position == len(self.items):
                self._start_epoch(self.epoch + 1)
            take = min(size - len(batch), len(self.items) - self.position)
            batch.extend(self.items[int(i)] for i in self._order[self.position:self.position + take])
            self.position += take
        return batch

    def __iter__(self):
        while True:
            yield self.next_batch()

    def _start_epoch(self, epoch: int) -> None:
        self.epoch, self.position = epoch, 0
        self._order = compute_epoch_order(len(self.items), seed=self.seed, epoch=epoch, shuffle=self.shuffle)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "shuffle": self.shuffle, "num_items": len(self.items)}

    def load_state_dict(self, state: dict) -> None:
        """Restore a cursor saved by ``state_dict``; the dataset and seed must be the same."""
        for key, mine in (("num_items", len(self.items)), ("seed", self.seed), ("shuffle", self.shuffle)):
            if state.get(key) != mine:
                raise ValueError(f"prompt stream state has {key}={state.get(key)!r} but this stream has "
                                 f"{key}={mine!r}; resume needs the same dataset and data.shuffle_seed")
        if not 0 <= state["position"] <= len(self.items):
            raise ValueError(f"prompt stream state position {state['position']} outside [0, {len(self.items)}]")
        self._start_epoch(int(state["epoch"]))
        self.position = int(state["position"])
