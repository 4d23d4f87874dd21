"""Random inputs for the algorithm tests: right-padded response masks and padding garbage."""
from __future__ import annotations

import torch


def random_mask(batch: int, length: int, generator: torch.Generator, *, min_len: int = 1) -> torch.Tensor:
    """Float 0/1 mask [B, T], right-padded, each row with between min_len and T tokens."""
    lengths = torch.randint(min_len, length + 1, (batch,), generator=generator)
    return (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.float64)


def with_garbage(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Copy of x whose padding holds NaN, +-inf and huge values instead of what it had."""
    junk = torch.randn(x.shape, generator=generator, dtype=torch.float64) * 1e30
    junk.view(-1)[0::5] = float("nan")
    junk.view(-1)[1::7] = float("inf")
    junk.view(-1)[2::11] = -float("inf")
    return torch.where(mask.bool(), x, junk.to(x.dtype))
