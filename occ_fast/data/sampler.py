"""Seeded, resumable prompt sampler: epoch-wise shuffles with an exact continuation after a restart."""

from __future__ import annotations

from typing import Any

import numpy as np


class PromptSampler:
    """Yields dataset indices in batches, reshuffling every epoch.

    Epoch ``e``'s order is a pure function of ``(seed, e)``, so the state is just
    ``(epoch, position)``: restoring it reproduces the same continuation without storing the
    permutation or an RNG state. Batches run across epoch boundaries, so every prompt is seen
    equally often.
    """

    def __init__(self, num_items: int, seed: int = 0, shuffle: bool = True) -> None:
        if num_items < 1:
            raise ValueError(f"PromptSampler needs num_items >= 1, got {num_items}")
        self.num_items, self.seed, self.shuffle = num_items, seed, shuffle
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def next_batch(self, batch_size: int) -> list[int]:
        """The next ``batch_size`` indices (moving into the next epoch when this one runs out)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        batch: list[int] = []
        while len(batch) < batch_size:
            if self.position == self.num_items:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            take = min(batch_size - len(batch), self.num_items - self.position)
            batch.extend(int(i) for i in self._order[self.position : self.position + take])
            self.position += take
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_items": self.num_items,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state; the dataset size, seed and shuffle flag must match the saved ones."""
        for key in ("num_items", "seed", "shuffle"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"PromptSampler state has {key}={state.get(key)!r} but this sampler has "
                    f"{key}={getattr(self, key)!r}: the dataset or seed changed since the checkpoint"
                )
        if not 0 <= state["position"] <= self.num_items or state["epoch"] < 0:
            raise ValueError(f"PromptSampler state has invalid epoch/position: {state}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order(self.epoch)
