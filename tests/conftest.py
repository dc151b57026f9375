"""Shared fixtures: a spy on the verification step, to prove which decoding paths a test exercised."""

import pytest
import torch

import transformers_space.decoding as decoding

torch.set_num_threads(2)


class VerificationLog:
    """Every pass's per-row accepted counts (only rows that took part), as the decoding loop saw them."""

    def __init__(self):
        self.passes: list[dict[int, int]] = []

    def record(self, accepted: torch.Tensor, active: torch.Tensor) -> None:
        self.passes.append({row: int(accepted[row]) for row in torch.nonzero(active).flatten().tolist()})

    def counts(self) -> list[int]:
        return [count for entry in self.passes for count in entry.values()]

    def clear(self) -> None:
        self.passes.clear()


@pytest.fixture
def verification_log(monkeypatch):
    log = VerificationLog()
    real = decoding.greedy_verify

    def spy(verify_logits, candidates, score_fn, active):
        accepted, next_token = real(verify_logits, candidates, score_fn, active)
        log.record(accepted, active)
        return accepted, next_token

    monkeypatch.setattr(decoding, "greedy_verify", spy)
    return log
