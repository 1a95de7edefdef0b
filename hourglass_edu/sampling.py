"""Sampling: how one next token is chosen from a vector of logits (pure functions, no model).

How one new character is chosen (`sample_token`), in this order:
1. divide the logits by the temperature (`temperature=0` means greedy: always the most likely);
2. top-k: keep the k most likely characters;
3. top-p (nucleus): keep the smallest set of most likely characters whose probabilities add up to
   at least p (of the distribution left after steps 1-2);
4. draw from what is left, with a seeded `torch.Generator` so that a seed reproduces a sample.

Numerical safety: the largest logit is subtracted before dividing by the temperature, so the
softmax never sees a large positive number. A temperature so small that the division overflows
(say `1e-40`: every other logit becomes -inf, or 0/0) is treated exactly like `temperature=0`:
greedy, the first most likely token, without a random draw. Logits that define no distribution
(a NaN or +inf among them, or every one -inf: damaged weights, a diverged run) raise a ValueError
instead of a made-up token.
"""

from __future__ import annotations

import math

import torch

__all__ = ["MAX_SEED", "next_token_probabilities", "sample_token"]


MAX_SEED = 2**63 - 1  # torch's generators take a signed 64-bit seed (the command line's range)


def check_sampling_settings(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ValueError, saying what to change, for settings that cannot define a distribution."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a number >= 0, got {shown_number(temperature)}")
    if not temperature >= 0 or not _finite(temperature):
        raise ValueError(f"temperature must be >= 0 and finite (0 = greedy), got "
                         f"{shown_number(temperature)}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 or None (no limit), got "
                         f"{shown_number(top_k)}")
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None (no limit), got "
                             f"{shown_number(top_p)}")


def _finite(number: float) -> bool:
    """Whether `number` is finite as a float (an int beyond float's range is not)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def check_seed(seed) -> None:
    """Raise ValueError unless `seed` is an int from 0 to `MAX_SEED`, a CPU torch.Generator or
    None."""
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise ValueError("pass a CPU torch.Generator (sampling draws on the CPU)")
    elif seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an int, a torch.Generator or None, got {seed!r}")
    elif seed is not None and not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be a whole number from 0 to 2**63 - 1 ({MAX_SEED}), "
                         f"got {shown_number(seed)}")


def shown_number(value) -> str:
    """`value` for an error message: a huge int by its size (Python will not print one of over
    4300 digits), anything else as its repr cut to 40 characters."""
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"{'-' if value < 0 else ''}a {value.bit_length()}-bit number"
    return f"{value!r:.40}"


def make_generator(seed: int | torch.Generator | None) -> torch.Generator:
    """A CPU torch.Generator: the one given, one seeded with `seed`, or a freshly seeded one."""
    check_seed(seed)
    if isinstance(seed, torch.Generator):
        return seed
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def scale_by_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor | None:
    """`(logits - max) / temperature` in float32 (the largest becomes 0), or None for greedy.

    None means: pick the most likely token. That is the case for `temperature == 0`, and for a
    temperature so small that the division overflows (a finite logit would become inf or nan).
    Logits already at -inf stay -inf. logits: (..., vocab).
    """
    if temperature == 0:
        return None
    logits = logits.detach().float()
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    scaled = shifted / float(temperature)  # a Python int may not fit int64
    if not torch.isfinite(scaled[torch.isfinite(shifted)]).all():
        return None
    return scaled


def keep_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Set every logit below the k-th largest to -inf. logits: (..., vocab).

    Ties with the k-th largest are kept, so slightly more than k may survive on exact ties.
    """
    if top_k >= logits.shape[-1]:
        return logits
    kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def keep_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens with total probability >= top_p.

    A token is kept when the probability of the tokens ranked strictly above it is still below
    top_p; so the most likely token is always kept, and the token that crosses top_p is kept too.
    logits: (..., vocab); returns logits with the rest set to -inf.
    """
    if top_p >= 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    sorted_probs = torch.softmax(sorted_logits, dim=-1)
    mass_above = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    drop_sorted = mass_above >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def next_token_probabilities(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """The distribution `sample_token` draws from: (vocab,) logits -> (vocab,) probabilities.

    When greedy (temperature 0, or too small to divide by) it is one-hot on the most likely token
    (the first one on ties).
    """
    check_sampling_settings(temperature, top_k, top_p)
    _check_logits_tensor(logits, "next_token_probabilities", any_shape=True)
    _raise_if_unusable(bool(_unusable(logits.detach().float()).any()))
    scaled = scale_by_temperature(logits, temperature)
    if scaled is None:
        logits = logits.detach().float()
        probs = torch.zeros_like(logits)
        probs.scatter_(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
        return probs
    return _filtered_softmax(scaled, top_k, top_p)


def _filtered_softmax(scaled: torch.Tensor, top_k: int | None, top_p: float | None):
    """Steps 2-3 of the rules on temperature-scaled logits, then the softmax."""
    if top_k is not None:
        scaled = keep_top_k(scaled, top_k)
    if top_p is not None:
        scaled = keep_top_p(scaled, top_p)
    return torch.softmax(scaled, dim=-1)


def sample_token(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Choose the next token id from (vocab,) logits (see the module docstring for the rules).

    Greedy choices (see `scale_by_temperature`) take the argmax and draw no random number.
    The choice is made on the logits' device and read back once (one host sync per token), with
    the check that the logits define a distribution (ValueError otherwise, no random number used).
    """
    check_sampling_settings(temperature, top_k, top_p)
    _check_logits_tensor(logits, "sample_token")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got "
                         f"{type(generator).__name__}; for a seed, pass "
                         "torch.Generator().manual_seed(seed)")
    logits = logits.detach().float()
    unusable = _unusable(logits)
    if temperature == 0:
        token, bad = torch.stack((logits.argmax(), unusable.long())).tolist()  # the one sync
        _raise_if_unusable(bad)
        return token
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    scaled = shifted / float(temperature)  # a Python int may not fit int64
    # the greedy fallback of `scale_by_temperature`, decided on the device: no sync here
    overflowed = (torch.isfinite(shifted) & ~torch.isfinite(scaled)).any()
    probs = _filtered_softmax(scaled, top_k, top_p)
    state = _random_state(generator)
    choice = _draw(probs, generator)
    token, greedy, fell_back, bad = torch.stack(
        (choice, logits.argmax(dim=-1), overflowed.long(), unusable.long())
    ).tolist()  # the one sync
    if fell_back or bad:  # greedy after all, or no choice: as if no random number had been drawn
        _restore_random_state(generator, state)
        _raise_if_unusable(bad)
        return greedy
    return token


def _check_logits_tensor(logits, where: str, *, any_shape: bool = False) -> None:
    """Type and shape, on the host: a tensor of (vocab,) logits (or (..., vocab))."""
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"{where} takes a tensor of logits, got {type(logits).__name__}")
    if logits.dim() == 0 or logits.shape[-1] == 0 or (not any_shape and logits.dim() != 1):
        shape = "(..., vocab)" if any_shape else "(vocab,): one position's logits"
        raise ValueError(f"{where} takes logits of shape {shape}, got shape "
                         f"{tuple(logits.shape)}")


def _unusable(logits: torch.Tensor) -> torch.Tensor:
    """Per row (on the device, no sync): True where the logits define no distribution (a NaN or
    +inf among them, or every one -inf)."""
    broken = (torch.isnan(logits) | torch.isposinf(logits)).any(dim=-1)
    return broken | ~torch.isfinite(logits).any(dim=-1)


def _raise_if_unusable(bad) -> None:
    if bad:
        raise ValueError("the logits define no distribution (a NaN or +inf among them, or every "
                         "one -inf), so no token can be chosen: the model's weights are damaged "
                         "or its training diverged; load a checkpoint from before the failure")


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw from `probs` (vocab,), as `torch.multinomial(probs.cpu(), 1, generator)` draws
    it, but on probs' device: argmax of probs / Exp(1) noise, the noise drawn on the CPU from
    `generator`, so that a seed gives the same text whatever device the model runs on."""
    noise = torch.empty(probs.shape, dtype=probs.dtype).exponential_(generator=generator)
    return (probs / noise.to(probs.device, non_blocking=True)).argmax(dim=-1)


def _random_state(generator: torch.Generator | None) -> torch.Tensor:
    return torch.random.get_rng_state() if generator is None else generator.get_state()


def _restore_random_state(generator: torch.Generator | None, state: torch.Tensor) -> None:
    if generator is None:
        torch.random.set_rng_state(state)
    else:
        generator.set_state(state)
