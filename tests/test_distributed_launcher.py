"""The launcher itself: results come back per rank, failures and hangs surface as errors."""
import time

import pytest
import torch
import torch.distributed as dist

from tests.distributed import run_distributed


def _allreduce_rank(rank, world_size):
    dist.init_process_group("gloo")
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    return value.item()


def _fail_on_rank_one(rank, world_size):
    if rank == 1:
        raise ValueError("boom on rank one")
    return rank


def _hang(rank, world_size):
    time.sleep(60)


def test_results_are_returned_in_rank_order():
    # 1 + 2 + 3 = 6 on every rank.
    assert run_distributed(_allreduce_rank, world_size=3, timeout_s=60) == [6.0, 6.0, 6.0]


def test_rank_failure_is_raised_with_its_message():
    with pytest.raises(RuntimeError, match="boom on rank one"):
        run_distributed(_fail_on_rank_one, world_size=2, timeout_s=60)


def test_hang_becomes_a_timeout():
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        run_distributed(_hang, world_size=2, timeout_s=3)
    assert time.monotonic() - start < 30
