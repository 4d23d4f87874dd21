"""Input checks shared by the pure algorithm functions (advantage/, reward/, update/losses).

Every check raises ValueError naming the argument and the shape or range it expected, so
a caller who passes [B] where [B, T] belongs learns which argument is wrong without
reading a broadcasting traceback. The checks read tensor values (mask is 0/1, labels in
[0, 1]); on a GPU that is one small device->host sync per call, which is negligible next
to the forward passes that produced the inputs.

Left out: dtype coercion beyond float upcasting (callers pass floats or bools) and
device checks (torch already reports mismatched devices clearly).
"""
from __future__ import annotations

import math

import torch


def check_response_mask(response_mask: torch.Tensor, *, name: str = "response_mask") -> torch.Tensor:
    """Check a [B, T] mask of 0/1 values and return it as a bool tensor."""
    if not isinstance(response_mask, torch.Tensor) or response_mask.dim() != 2:
        got = tuple(response_mask.shape) if isinstance(response_mask, torch.Tensor) else type(response_mask).__name__
        raise ValueError(f"{name} must be a 2-D tensor of shape [B, T]; got {got}")
    if response_mask.dtype == torch.bool:
        return response_mask
    as_bool = response_mask.bool()
    if not torch.equal(as_bool.to(response_mask.dtype), response_mask):  # fails for any value but 0/1
        bad = response_mask[(response_mask != 0) & (response_mask != 1)][0].item()
        raise ValueError(f"{name} must hold only 0 and 1 (1 = real response token); found {bad}")
    return as_bool


def check_token_tensor(x: torch.Tensor, name: str, response_mask: torch.Tensor) -> None:
    """Check that a per-token tensor has the [B, T] shape of ``response_mask``."""
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(response_mask.shape):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must have shape [B, T] = {tuple(response_mask.shape)} like response_mask; got {got}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")


def check_sequence_tensor(x: torch.Tensor, name: str, batch_size: int) -> None:
    """Check a per-sequence tensor of shape [B] with finite values."""
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != (batch_size,):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must have shape [B] = ({batch_size},), one value per sequence; got {got}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite; found NaN or inf")


def check_unit_interval(x: torch.Tensor, name: str) -> None:
    """Check that every value lies in [0, 1] (outcome labels, pass fractions)."""
    if bool(((x < 0) | (x > 1)).any()):
        bad = x[(x < 0) | (x > 1)][0].item()
        raise ValueError(f"{name} must lie in [0, 1] (accuracy or pass fraction); found {bad}")


def check_group_size(group_size: int, batch_size: int, *, name: str = "group_size", min_size: int = 2) -> int:
    """Check that the batch splits into groups of ``group_size`` adjacent samples; return P."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < min_size:
        raise ValueError(f"{name} must be an int >= {min_size} (samples per prompt); got {group_size!r}")
    if batch_size % group_size != 0:
        raise ValueError(
            f"batch size B = {batch_size} is not divisible by {name} = {group_size}; "
            f"expected B = P * {name} with the samples of each prompt adjacent"
        )
    return batch_size // group_size


def check_nonempty_rows(response_mask: torch.Tensor) -> torch.Tensor:
    """Return per-row token counts [B]; raise if a row has no response token."""
    counts = response_mask.sum(dim=-1)
    if bool((counts == 0).any()):
        row = int(torch.nonzero(counts == 0)[0, 0])
        raise ValueError(
            f"response_mask row {row} has no response token; every sequence needs at least one "
            "(its EOS or last generated token carries the outcome reward)"
        )
    return counts


def check_scalar(value: float, name: str, *, low: float, high: float = math.inf, low_open: bool = False) -> float:
    """Check a finite float in [low, high] (or (low, high] when ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must lie in {bracket}{low}, {high}]; got {value}")
    return float(value)


def check_choice(value: str, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}; got {value!r}")
    return value
