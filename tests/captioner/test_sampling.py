from __future__ import annotations

import math

import torch

from recaption.captioner.sampling import SeededSampler, gumbel_noise, row_seed


def test_noise_is_a_pure_function_of_seed_step_and_token():
    seeds = torch.tensor([row_seed(0, "a"), row_seed(0, "b")])
    a = gumbel_noise(seeds, 3, 1000)
    b = gumbel_noise(seeds.flip(0), 3, 1000).flip(0)  # order of rows does not matter
    assert torch.equal(a, b)
    assert torch.equal(gumbel_noise(seeds[:1], 3, 1000), a[:1])  # nor batch-mates
    assert not torch.equal(a, gumbel_noise(seeds, 4, 1000))
    assert not torch.equal(a[0], a[1])
    assert torch.isfinite(a).all()


def test_noise_is_gumbel_distributed():
    g = gumbel_noise(torch.tensor([row_seed(1, "x")]), 0, 200_000)[0].double()
    euler_gamma = 0.5772156649
    assert abs(g.mean().item() - euler_gamma) < 0.02
    assert abs(g.var().item() - math.pi**2 / 6) < 0.05


def test_row_seed_depends_on_seed_and_key():
    assert row_seed(0, "a") == row_seed(0, "a")
    assert len({row_seed(0, "a"), row_seed(1, "a"), row_seed(0, "b")}) == 3
    assert 0 <= row_seed(123, "k") < 2**62


def _draws(scores: torch.Tensor, steps: int, **kw: float) -> torch.Tensor:
    sampler = SeededSampler([row_seed(7, "s")], prompt_length=0, **kw)
    picks = [int(sampler(torch.zeros((1, step), dtype=torch.long), scores).argmax()) for step in range(steps)]
    return torch.bincount(torch.tensor(picks), minlength=scores.shape[-1]).double() / steps


def test_greedy_over_the_sampler_draws_from_the_softmax():
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    freq = _draws(probs.log(), 4000, temperature=1.0)
    assert torch.allclose(freq, probs[0].double(), atol=0.03)


def test_low_temperature_sharpens():
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    freq = _draws(probs.log(), 2000, temperature=0.2)
    expected = (probs.log() / 0.2).softmax(-1)[0].double()
    assert torch.allclose(freq, expected, atol=0.03)
    assert freq[0] > 0.9


def test_top_k_and_top_p_cut_the_tail():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert _draws(probs.log(), 1000, top_k=2)[2:].sum() == 0
    freq = _draws(probs.log(), 1000, top_p=0.7)  # 0.5 + 0.3 reach 0.7: tokens 2 and 3 go
    assert freq[2:].sum() == 0
    assert freq[1] > 0.2


def test_forbidden_tokens_stay_forbidden():
    scores = torch.tensor([[0.0, float("-inf"), 0.0]])
    assert _draws(scores, 500)[1] == 0
