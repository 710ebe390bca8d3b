"""ReMDM's remasking (Wang et al. 2025, "Remasking Discrete Diffusion Models with Inference-Time Scaling", arXiv
2503.00307, section 4), as the mask-predict engine's "remdm" strategy uses it: pure functions of the block's
decoded tokens, their confidences, the schedule's room and the run's generator.

The rule: diffusion whose committed tokens may be taken back. Before an iteration commits, every token of the
block decoded in an earlier iteration is re-masked with probability sigma_t, one recorded coin each; sigma_t is at
most sigma_max = min(1, (1 - alpha_s) / alpha_t), here the masks the schedule leaves after the iteration over the
tokens decoded before it, so re-masking never outruns the schedule. ReMDM-cap takes sigma_t = min(eta, sigma_max),
ReMDM-rescale eta * sigma_max, and ReMDM-conf spreads the cap's sigma_t over the decoded tokens by softmax(-psi),
psi the confidence a token had when committed, so the least sure go first. The paper's step is one independent
draw per position, so its mask count is right only on average; here the count follows the diffusion schedule
exactly: each re-mask buys one more commit among the masked positions, and the last iteration (sigma_max = 0)
leaves no mask. A re-masked token is predicted again by the next forward. eta = 0 is the diffusion strategy.
"""
from __future__ import annotations

import torch

from engines.decoding.mask_records import Remasking

REMASK_SCHEDULES = ("cap", "rescale", "conf")


def remask_chances(confidence: list[float], after: int, eta: float, schedule: str) -> tuple[float, float, list[float]]:
    """sigma_max, sigma_t and each decoded token's chance of a re-mask (the paper's sigma_t^(l)). sigma_max =
    min(1, (1 - alpha_s) / alpha_t) with alpha the share unmasked: the masks left after this iteration over the
    tokens decoded before it, so the expected re-masks never exceed the masks the schedule still has."""
    if not confidence:
        return 0.0, 0.0, []
    sigma_max = min(1.0, after / len(confidence))
    sigma = eta * sigma_max if schedule == "rescale" else min(eta, sigma_max)
    if schedule != "conf":
        return sigma_max, sigma, [sigma] * len(confidence)
    # softmax(-psi) over the decoded tokens: the least confident weigh most, and the chances add up to sigma_t
    weights = torch.softmax(-torch.tensor(confidence, dtype=torch.float64), dim=0).tolist()
    return sigma_max, sigma, [sigma * w for w in weights]


def draw_remasks(decoded: list[int], confidence: list[float], after: int, eta: float, schedule: str,
                 rng: torch.Generator) -> tuple[list[int], Remasking]:
    """One coin per decoded position (a token committed in an earlier iteration of the block), re-masked when
    below its chance; `after` is the masks the schedule leaves in the block after this iteration. No coin is
    drawn when every chance is 0 (eta 0, the first and the last iteration), so eta 0 uses the generator as
    diffusion does. Coins that fall under beyond the schedule's room keep their tokens, the most confident first
    (the paper's independent draws can overshoot; this schedule's count is exact)."""
    sigma_max, sigma, chances = remask_chances(confidence, after, eta, schedule)
    # float32 whatever the default dtype, as the random strategy's draws: the same seed, the same coins
    coins = torch.rand(len(decoded), generator=rng, dtype=torch.float32).tolist() if any(chances) else []
    under = [k for k, u in enumerate(coins) if u < chances[k]]
    room = sorted(under, key=lambda k: (confidence[k], decoded[k]))[:after]
    remasked = sorted(decoded[k] for k in room)
    return remasked, Remasking(
        schedule=schedule, eta=eta, sigma_max=round(sigma_max, 6), sigma=round(sigma, 6), decoded=decoded,
        confidence=confidence, probability=[round(c, 6) for c in chances], coins=[round(u, 6) for u in coins],
        no_room=sorted(decoded[k] for k in under if k not in room))
