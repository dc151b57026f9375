"""Shared fixtures: a spy on the verification step, to prove which decoding paths a test exercised."""

import pytest
import torch

import transformers_space.decoding.verify as verify

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
    """Records every pass of greedy and sampling verification (the real functions still do the work)."""
    log = VerificationLog()

    def spying(real):
        def spy(verify_logits, candidates, *args):
            accepted, next_token, scores = real(verify_logits, candidates, *args)
            log.record(accepted, args[-1])
            return accepted, next_token, scores

        return spy

    monkeypatch.setattr(verify, "greedy_verify", spying(verify.greedy_verify))
    monkeypatch.setattr(verify, "sampling_verify", spying(verify.sampling_verify))
    return log
