"""The token batch the update stage consumes: prompt + response per row, right-padded.

Row b of `input_ids` holds prompt_lengths[b] prompt tokens, then response_lengths[b]
response tokens, then padding (any id). Response-token tensors elsewhere in the project are
[B, T] with T = max(response_lengths); `response_mask()` gives their validity mask.

Left out: packing several rows into one sequence (the forward instead trims each
micro-batch to its own longest row, see update/forward_backward.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SequenceBatch:
    input_ids: torch.Tensor  # [B, S] int64, prompt then response, right-padded
    prompt_lengths: torch.Tensor  # [B] int64
    response_lengths: torch.Tensor  # [B] int64

    def __post_init__(self):
        ids, plen, rlen = self.input_ids, self.prompt_lengths, self.response_lengths
        if ids.dim() != 2:
            raise ValueError(f"SequenceBatch.input_ids must be [B, S], got shape {tuple(ids.shape)}")
        batch = ids.shape[0]
        for name, t in (("prompt_lengths", plen), ("response_lengths", rlen)):
            if t.shape != (batch,):
                raise ValueError(f"SequenceBatch.{name} must have shape [{batch}], got {tuple(t.shape)}")
        if batch == 0:
            return
        if int(plen.min()) < 1:
            row = int(torch.argmin(plen))
            raise ValueError(f"SequenceBatch row {row}: prompt_lengths must be >= 1 (got {int(plen[row])})")
        if int(rlen.min()) < 0:
            raise ValueError(f"SequenceBatch row {int(torch.argmin(rlen))}: response_lengths must be >= 0")
        total = plen + rlen
        if int(total.max()) > ids.shape[1]:
            row = int(torch.argmax(total))
            raise ValueError(f"SequenceBatch row {row}: prompt+response length {int(total[row])} exceeds "
                             f"input_ids width {ids.shape[1]}")

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def max_response_length(self) -> int:
        return int(self.response_lengths.max()) if self.batch_size else 0

    def sequence_lengths(self) -> torch.Tensor:
        return self.prompt_lengths + self.response_lengths

    def response_mask(self) -> torch.Tensor:
        """[B, T] float mask: 1.0 for real response tokens, 0.0 for padding."""
        steps = torch.arange(self.max_response_length, device=self.input_ids.device)
        return (steps.unsqueeze(0) < self.response_lengths.unsqueeze(1)).float()

    def response_ids(self) -> torch.Tensor:
        """[B, T] response token ids (0 where response_mask is 0)."""
        steps = torch.arange(self.max_response_length, device=self.input_ids.device)
        cols = (self.prompt_lengths.unsqueeze(1) + steps).clamp(max=self.input_ids.shape[1] - 1)
        return torch.where(self.response_mask().bool(), self.input_ids.gather(1, cols), 0)

    def select(self, index) -> "SequenceBatch":
        """Rows `index` (LongTensor, list or slice), trimmed to their own longest row."""
        if isinstance(index, list):
            index = torch.tensor(index, dtype=torch.long)
        plen, rlen = self.prompt_lengths[index], self.response_lengths[index]
        width = int((plen + rlen).max()) if plen.numel() else 0
        return SequenceBatch(self.input_ids[index][:, :width], plen, rlen)

    def to(self, device) -> "SequenceBatch":
        return SequenceBatch(self.input_ids.to(device), self.prompt_lengths.to(device),
                             self.response_lengths.to(device))
