"""compute_step_advantages routes every algorithm to its estimator, with the trainer's float mask."""
import pytest
import torch

from prime_megatron.collect import RolloutBatch
from prime_megatron.config import RewardConfig
from prime_megatron.step import compute_step_advantages
from prime_megatron.update.batch import SequenceBatch


def _batch(outcomes, response_lengths):
    k = len(outcomes)
    ids = torch.ones(k, 2 + max(response_lengths), dtype=torch.long)
    sequences = SequenceBatch(ids, torch.full((k,), 2), torch.tensor(response_lengths))
    return RolloutBatch(sequences, torch.tensor(outcomes), torch.zeros(k, dtype=torch.bool),
                        torch.zeros(k, max(response_lengths)), group_size=k)


def test_rloo_without_whitening_by_hand():
    # K=4, r = [1, 0, 0, 1]: leave-one-out baselines [1/3, 2/3, 2/3, 1/3] -> [2/3, -2/3, -2/3, 2/3],
    # broadcast over each response's tokens and 0 on padding.
    batch = _batch([1.0, 0.0, 0.0, 1.0], [2, 3, 1, 3])
    adv = compute_step_advantages("rloo", batch, None, reward_cfg=RewardConfig(whiten=False))
    third = 1.0 / 3.0
    expected = torch.tensor([[2, 2, 0], [-2, -2, -2], [-2, 0, 0], [2, 2, 2]]) * third
    torch.testing.assert_close(adv, expected.float())


@pytest.mark.parametrize("algorithm", ["prime", "rloo", "grpo", "reinforce_pp"])
def test_every_algorithm_gives_token_advantages_zero_on_padding(algorithm):
    batch = _batch([1.0, 0.0, 0.0, 1.0], [2, 3, 1, 3])
    process = torch.randn(4, 3, generator=torch.Generator().manual_seed(0)) * batch.response_mask
    adv = compute_step_advantages(algorithm, batch, process if algorithm == "prime" else None,
                                  reward_cfg=RewardConfig())
    assert adv.shape == (4, 3)
    assert torch.all(adv[batch.response_mask == 0] == 0)
    assert adv.abs().sum() > 0
