"""Every random draw of a training step, a pure function of (SEED, shard, step): exact resume, any process count.

Nothing random depends on a dataloader or on the global RNG state. A step's timesteps, noise, condition-dropout
mask and flips come from a generator seeded by hashing ``(SEED, shard, step)`` with numpy's ``SeedSequence`` (no
collisions, unlike ``seed*K + shard*M + step``); its batch indices from per-epoch permutations seeded by
``(SEED, epoch)``, each of the ``world`` shards taking its slice of the global batch. A shard is what one rank
of a ``world``-process run draws, so one process computing several shards replays a multi-process run.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def step_seed(*parts: int) -> int:
    """A 64-bit seed from integer ``parts`` (SeedSequence: distinct tuples give independent streams)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0])


class BatchIndices:
    """Index stream = concatenated per-epoch permutations of range(N) seeded by (SEED, epoch)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.cache = n, seed, {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self.cache:
            if len(self.cache) > 4:
                self.cache.clear()
            g = torch.Generator().manual_seed(step_seed(self.seed, epoch, 2))
            self.cache[epoch] = torch.randperm(self.n, generator=g)
        return self.cache[epoch]

    def __call__(self, step: int, rank: int, batch: int, world: int) -> torch.Tensor:
        pos = step * batch * world + rank * batch + torch.arange(batch)
        epochs, offsets = pos // self.n, pos % self.n
        return torch.stack([self.perm(int(e))[int(o)] for e, o in zip(epochs, offsets)])


def shard_draws(batches: BatchIndices, seed: int, step: int, shard: int, world: int, batch: int, resolution: int,
                timesteps: int, p_uncond: float) -> tuple[torch.Tensor, ...]:
    """Shard ``shard``'s batch indices, timesteps, noise, condition-dropout mask and flips at ``step``: what rank
    ``shard`` of a ``world``-process run draws."""
    g = torch.Generator().manual_seed(step_seed(seed, shard, step, 0))
    return (batches(step, shard, batch, world), torch.randint(0, timesteps, (batch,), generator=g),
            torch.randn((batch, 3, resolution, resolution), generator=g), torch.rand(batch, generator=g) < p_uncond,
            torch.rand(batch, 2, generator=g) < 0.5)


def quarter_turns(seed: int, step: int, shard: int, batch: int) -> torch.Tensor:
    """Shard ``shard``'s quarter turns (0-3 per image) at ``step`` (ROT90), from a stream of their own, so that
    runs without them draw exactly what they drew before the option existed."""
    g = torch.Generator().manual_seed(step_seed(seed, shard, step, 5))
    return torch.randint(0, 4, (batch,), generator=g)


def orient(x: torch.Tensor, flips: torch.Tensor | None, turns: torch.Tensor | None) -> torch.Tensor:
    """Images ``x`` [B, C, H, W] flipped left-right and up-down where ``flips`` [B, 2] says so, then turned by
    ``turns`` [B] quarter turns (square images): together the 8 orientations of the square, none of which
    changes what a cell or a lesion is."""
    if flips is not None:
        x = torch.where(flips[:, 0, None, None, None], x.flip(-1), x)
        x = torch.where(flips[:, 1, None, None, None], x.flip(-2), x)
    if turns is not None:
        for k in (1, 2, 3):
            x = torch.where((turns == k)[:, None, None, None], x.rot90(k, dims=(-2, -1)), x)
    return x


def seed_globals(seed: int, shard: int, step: int) -> None:
    """Seed torch's (dropout masks), Python's and numpy's global generators for ``step`` of the process whose first
    shard is ``shard``: unused draws too are saved in checkpoints, so a rerun writes the same bytes."""
    torch.manual_seed(step_seed(seed, shard, step, 1))
    random.seed(step_seed(seed, shard, step, 3))
    np.random.seed(step_seed(seed, shard, step, 4) % 2**32)
