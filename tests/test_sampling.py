"""Sampling rules, prompts, stop strings and streaming, on a tiny bigram stand-in model.

The stand-in makes the expected distribution exact, so each rule can be checked directly; the
hourglass itself (and its cache) is tested in test_generate.py.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hourglass_edu.data import CharTokenizer
from hourglass_edu.generation import (
    GenerationSettings,
    encode_prompt,
    generate,
    stream,
    thread_limit,
)
from hourglass_edu.sampling import (
    keep_top_k,
    keep_top_p,
    next_token_probabilities,
    sample_token,
    scale_by_temperature,
)


class BigramModel(nn.Module):
    """logits[b, t] = table[tokens[b, t]]; records the length of every input it is given."""

    def __init__(self, table: torch.Tensor, max_length: int | None = None):
        super().__init__()
        self.table = nn.Parameter(table.clone())
        self.config = SimpleNamespace(max_length=max_length)
        self.seen: list[list[int]] = []

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.seen.append(tokens[0].tolist())
        return self.table[tokens]


@pytest.fixture
def tokenizer():
    return CharTokenizer("\nabcdefgh ")  # <eot> is id 0, then these characters


def cycling_model(tokenizer, max_length=None, sharpness=20.0):
    """A model that (almost surely) writes 'abcdefgh abcdefgh ...' after any character."""
    vocab = tokenizer.vocab_size
    table = torch.zeros(vocab, vocab)
    order = tokenizer.encode("abcdefgh ")
    for current, following in zip(order, order[1:] + order[:1], strict=True):
        table[current, following] = sharpness
    table[tokenizer.eot_id, order[0]] = sharpness
    table[tokenizer.encode("\n")[0], order[0]] = sharpness
    return BigramModel(table, max_length)


# --- the filters, on hand-made distributions -------------------------------------------------


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    logits = probs.log()

    def kept(p):
        return set(torch.isfinite(keep_top_p(logits, p)).nonzero().flatten().tolist())

    assert kept(0.5) == {1}  # 0.5 alone reaches 0.5
    assert kept(0.3) == {1}  # the most likely token always survives
    assert kept(0.51) == {1, 3}
    assert kept(0.8) == {1, 3}
    assert kept(0.81) == {0, 1, 3}
    assert kept(0.96) == {0, 1, 2, 3}
    assert kept(1.0) == {0, 1, 2, 3}
    renormalised = next_token_probabilities(logits, top_p=0.8)
    torch.testing.assert_close(renormalised, torch.tensor([0.0, 0.625, 0.0, 0.375]))


def test_top_p_applies_after_temperature():
    probs = torch.tensor([0.6, 0.3, 0.1])
    # At temperature 1 the first token alone reaches 0.55; flattened (T=10) it no longer does.
    assert (next_token_probabilities(probs.log(), top_p=0.55) > 0).tolist() == [True, False, False]
    flat = next_token_probabilities(probs.log(), temperature=10.0, top_p=0.55)
    assert (flat > 0).tolist() == [True, True, False]


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([1.0, 5.0, 3.0, -2.0, 4.0])
    assert torch.isfinite(keep_top_k(logits, 2)).tolist() == [False, True, False, False, True]
    assert torch.isfinite(keep_top_k(logits, 10)).all()


def test_tokens_outside_top_k_are_never_sampled():
    generator = torch.Generator().manual_seed(0)
    logits = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])  # nearly uniform
    drawn = {
        sample_token(logits, top_k=3, temperature=2.0, generator=generator) for _ in range(500)
    }
    assert drawn == {3, 4, 5}


def test_sampling_follows_the_distribution():
    generator = torch.Generator().manual_seed(1)
    probs = torch.tensor([0.2, 0.5, 0.3])
    draws = torch.tensor([sample_token(probs.log(), generator=generator) for _ in range(3000)])
    frequencies = torch.bincount(draws, minlength=3).float() / len(draws)
    assert torch.allclose(frequencies, probs, atol=0.04)


def test_temperature_zero_is_greedy_and_low_temperature_approaches_it():
    logits = torch.tensor([0.3, 2.0, 1.9])
    assert sample_token(logits, temperature=0) == 1
    cold = next_token_probabilities(logits, temperature=0.01)
    assert cold[1] > 0.99
    torch.testing.assert_close(
        next_token_probabilities(logits, temperature=0), torch.tensor([0.0, 1.0, 0.0])
    )


def test_a_temperature_too_small_to_divide_by_is_greedy():
    logits = torch.tensor([0.3, 2.0, 1.9, float("-inf"), -50.0])
    greedy = next_token_probabilities(logits, temperature=0)
    for tiny in (1e-40, 1e-50, 5e-324):  # (logits - max) / tiny overflows, or tiny rounds to 0
        assert scale_by_temperature(logits, tiny) is None
        torch.testing.assert_close(next_token_probabilities(logits, temperature=tiny), greedy)
        torch.testing.assert_close(
            next_token_probabilities(logits, temperature=tiny, top_k=2, top_p=0.5), greedy
        )
        generator = torch.Generator().manual_seed(0)
        state = generator.get_state()
        assert sample_token(logits, temperature=tiny, generator=generator) == 1
        assert torch.equal(generator.get_state(), state)  # greedy draws no random number
    tied = torch.tensor([1.0, 3.0, 3.0])
    assert sample_token(tied, temperature=1e-40) == sample_token(tied, temperature=0) == 1


def test_large_logits_do_not_overflow_the_softmax():
    logits = torch.tensor([1e30, 1e30 - 1e24, -1e30])
    for temperature in (1e-6, 1e-9):  # logits / 1e-9 alone would be inf, and softmax nan
        probs = next_token_probabilities(logits, temperature=temperature)
        torch.testing.assert_close(probs, torch.tensor([1.0, 0.0, 0.0]))
    shifted = scale_by_temperature(torch.tensor([1000.0, 999.0]), 0.5)
    torch.testing.assert_close(shifted, torch.tensor([0.0, -2.0]))


def test_generation_at_a_tiny_temperature_equals_greedy(tokenizer):
    model = cycling_model(tokenizer, sharpness=1.0)
    greedy = generate(model, tokenizer, "ab", 30, temperature=0, seed=1)
    assert generate(model, tokenizer, "ab", 30, temperature=1e-40, seed=2) == greedy


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p": -0.1}, "top_p"),
        ({"seed": "seven"}, "seed"),
        ({"stop": ""}, "stop"),
        ({"stop": ["ab", 3]}, "stop"),
        ({"stop": 3}, "stop"),
        ({"use_cache": "yes"}, "use_cache"),
        ({"stop_at_end": None}, "stop_at_end"),
        ({"replace_unknown": 0}, "replace_unknown"),
    ],
)
def test_bad_settings_raise_clear_errors(tokenizer, settings, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**settings)
    model = cycling_model(tokenizer)
    with pytest.raises(ValueError, match=message):
        generate(model, tokenizer, "ab", 5, **settings)
    with pytest.raises(ValueError, match=message):
        stream(model, tokenizer, "ab", 5, **settings)  # fails at the call, not on first next()
    assert model.seen == []


def test_settings_object_and_keyword_overrides(tokenizer):
    model = cycling_model(tokenizer)
    settings = GenerationSettings(temperature=0, stop="ef")
    assert settings.stop == ("ef",) and GenerationSettings().stop == ()
    assert settings == GenerationSettings(temperature=0, stop=["ef"])
    assert generate(model, tokenizer, "", 30, settings) == "abcd"
    assert generate(model, tokenizer, "", 12, settings, stop=None) == "abcdefgh abc"
    assert generate(model, tokenizer, "", 9, GenerationSettings(stop="ef"), temperature=0) == "abcd"
    assert settings.replace(stop="cd") == GenerationSettings(temperature=0, stop="cd")
    assert settings.stop == ("ef",)  # overrides make a copy; the object never changes
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.temperature = 1.0
    with pytest.raises(ValueError, match="top_p"):
        settings.replace(top_p=2.0)


def test_unknown_settings_are_type_errors_naming_them(tokenizer):
    model = cycling_model(tokenizer)
    with pytest.raises(TypeError, match="temprature.*the settings are temperature, top_k"):
        generate(model, tokenizer, "a", 3, temprature=0.5)
    with pytest.raises(TypeError, match="GenerationSettings"):
        stream(model, tokenizer, "a", 3, 0.5)  # the old keyword-only settings, by position
    assert model.seen == []


def test_bad_max_new_tokens(tokenizer):
    model = cycling_model(tokenizer)
    for bad in (-1, 2.0, None):
        with pytest.raises(ValueError, match="max_new_tokens"):
            generate(model, tokenizer, "a", bad)
    assert generate(model, tokenizer, "a", 0) == ""


# --- prompts ---------------------------------------------------------------------------------


def test_prompt_starts_a_document(tokenizer):
    assert encode_prompt(tokenizer, "") == [tokenizer.eot_id]
    assert encode_prompt(tokenizer, "ab") == [tokenizer.eot_id, *tokenizer.encode("ab")]
    model = cycling_model(tokenizer)
    assert generate(model, tokenizer, "", 4, temperature=0) == "abcd"
    assert model.seen[0] == [tokenizer.eot_id]


def test_unknown_prompt_characters(tokenizer):
    model = cycling_model(tokenizer)
    with pytest.raises(ValueError, match="replace_unknown") as raised:
        generate(model, tokenizer, "aXbY", 3)
    assert "X" in str(raised.value) and "Y" in str(raised.value)
    assert encode_prompt(tokenizer, "aXbY", replace_unknown=" ") == [0, *tokenizer.encode("a b ")]
    assert encode_prompt(tokenizer, "aXbY", replace_unknown="") == [0, *tokenizer.encode("ab")]
    with pytest.raises(ValueError, match="itself not in the vocabulary"):
        encode_prompt(tokenizer, "aX", replace_unknown="Z")
    with pytest.raises(ValueError, match="string"):
        generate(model, tokenizer, 42, 3)
    assert generate(model, tokenizer, "aXc", 2, temperature=0, replace_unknown="") == "de"


def test_encode_prompt_refuses_a_replacement_that_is_not_text():
    tokenizer = CharTokenizer("ab", normalize="NFC")
    with pytest.raises(ValueError, match="replace_unknown must be a string or None, got 5"):
        encode_prompt(tokenizer, "abz", replace_unknown=5)


def test_long_prompt_keeps_its_last_window(tokenizer):
    model = cycling_model(tokenizer, max_length=6)
    prompt = "hgfedcba" * 2
    generate(model, tokenizer, prompt, 1, temperature=0, use_cache=False)
    assert model.seen == [tokenizer.encode(prompt[-6:])]


def test_window_overflow_keeps_the_newest_half(tokenizer):
    model = cycling_model(tokenizer, max_length=8)
    text = generate(model, tokenizer, "", 20, temperature=0, use_cache=False)
    assert text == "abcdefgh abcdefgh ab"
    lengths = [len(window) for window in model.seen]
    # 1 (<eot>) grows to 8, then the window drops to the newest 4 + the new token, and so on.
    assert lengths[:8] == list(range(1, 9))
    assert lengths[8:12] == [5, 6, 7, 8] and lengths[12] == 5
    assert max(lengths) == 8
    assert model.seen[8] == model.seen[7][-4:] + [tokenizer.encode(text[7])[0]]


# --- stopping and streaming ------------------------------------------------------------------


def test_stops_at_end_of_text(tokenizer):
    vocab = tokenizer.vocab_size
    table = torch.full((vocab, vocab), -20.0)
    a, b = tokenizer.encode("ab")
    table[0, a] = table[a, b] = table[b, 0] = 20.0  # <eot> a b <eot> a b ...
    model = BigramModel(table)
    assert generate(model, tokenizer, "", 10, temperature=0) == "ab"
    assert generate(model, tokenizer, "", 7, temperature=0, stop_at_end=False) == "ab<eot>ab<eot>a"


def test_stop_strings(tokenizer):
    model = cycling_model(tokenizer)
    assert generate(model, tokenizer, "", 30, temperature=0, stop="ef") == "abcd"
    assert generate(model, tokenizer, "", 30, temperature=0, stop=["zz", "h ab"]) == "abcdefg"
    assert generate(model, tokenizer, "", 30, temperature=0, stop=" ") == "abcdefgh"
    # A stop string that never appears changes nothing; one split across pieces is still found.
    assert generate(model, tokenizer, "", 5, temperature=0, stop="ax") == "abcde"
    pieces = list(stream(model, tokenizer, "", 30, temperature=0, stop="defg"))
    assert "".join(pieces) == "abc"


def test_stream_matches_generate_and_yields_one_character_at_a_time(tokenizer):
    model = cycling_model(tokenizer, sharpness=1.0)  # a real random walk
    settings = {"temperature": 0.9, "top_p": 0.9, "seed": 123}
    pieces = list(stream(model, tokenizer, "ab", 40, **settings))
    assert all(len(piece) == 1 for piece in pieces)
    assert "".join(pieces) == generate(model, tokenizer, "ab", 40, **settings)
    assert "".join(pieces) != generate(model, tokenizer, "ab", 40, **{**settings, "seed": 124})
    generator = torch.Generator().manual_seed(123)
    assert generate(model, tokenizer, "ab", 40, **{**settings, "seed": generator}) == "".join(
        pieces
    )


def test_stream_stops_promptly_when_the_consumer_breaks(tokenizer):
    model = cycling_model(tokenizer)
    received = []
    for piece in stream(model, tokenizer, "", 1000, temperature=0):
        received.append(piece)
        if len(received) == 3:
            break
    assert received == ["a", "b", "c"]
    assert len(model.seen) <= 4  # the prompt and at most one token beyond what was consumed


def test_generation_restores_training_mode_and_leaves_grad_mode_alone(tokenizer):
    model = cycling_model(tokenizer)
    model.train()
    pieces = stream(model, tokenizer, "", 5, temperature=0)
    next(pieces)
    assert torch.is_grad_enabled()  # grad mode must not leak out of the generator
    assert not model.training
    pieces.close()
    assert model.training


def test_seed_makes_sampling_reproducible(tokenizer):
    model = cycling_model(tokenizer, sharpness=0.5)
    first = generate(model, tokenizer, "", 50, seed=7)
    assert first == generate(model, tokenizer, "", 50, seed=7)
    assert first != generate(model, tokenizer, "", 50, seed=8)


# --- logits, seeds and threads at their edges ------------------------------------------------


@pytest.mark.parametrize("broken", ["nan", "all -inf", "+inf"])
@pytest.mark.parametrize("temperature", [0, 1.0, 1e-40])
def test_logits_that_define_no_distribution_raise_instead_of_choosing_token_0(broken, temperature):
    logits = torch.tensor([0.5, 2.0, -1.0])
    if broken == "nan":
        logits[1] = float("nan")
    elif broken == "all -inf":
        logits[:] = float("-inf")
    else:
        logits[2] = float("inf")
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    with pytest.raises(ValueError, match="define no distribution"):
        sample_token(logits, temperature=temperature, top_k=2, generator=generator)
    assert torch.equal(generator.get_state(), state)  # no random number spent on the failure
    with pytest.raises(ValueError, match="define no distribution"):
        next_token_probabilities(logits, temperature=temperature)


def test_a_model_writing_nan_logits_stops_generation_with_the_reason(tokenizer):
    model = cycling_model(tokenizer)
    with torch.no_grad():
        model.table[tokenizer.encode("c")[0]] = float("nan")  # after "c" the model breaks
    with pytest.raises(ValueError, match="weights are damaged or its training diverged"):
        generate(model, tokenizer, "", 10, temperature=0)
    with pytest.raises(ValueError, match="define no distribution"):
        generate(model, tokenizer, "", 10, seed=0)


@pytest.mark.parametrize("seed", [2**70, 2**63, -1, 10**5000],
                         ids=["2**70", "2**63", "-1", "10**5000"])
def test_seeds_outside_torchs_range_are_refused_with_the_range(tokenizer, seed):
    model = cycling_model(tokenizer)
    for call in (lambda: GenerationSettings(seed=seed),
                 lambda: generate(model, tokenizer, "a", 3, seed=seed)):
        with pytest.raises(ValueError, match=r"seed must be a whole number from 0 to 2\*\*63 - 1"):
            call()
    assert model.seen == []
    assert generate(model, tokenizer, "a", 3, seed=2**63 - 1) == generate(
        model, tokenizer, "a", 3, seed=2**63 - 1)


def test_threads_beyond_the_machine_are_refused_before_torch_sees_them(tokenizer, monkeypatch):
    """10**6 threads crashed the process inside torch (4096 aborted it): the setting is checked
    against the machine when it is made, and torch.set_num_threads is never called."""
    asked = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)
    model = cycling_model(tokenizer)
    limit = thread_limit()
    for threads in (10**6, 4096 if limit < 4096 else limit + 1, limit + 1, 10**400):
        with pytest.raises(ValueError, match=f"threads must be a whole number from 1 to {limit}"):
            generate(model, tokenizer, "a", 3, threads=threads)
    assert asked == [] and model.seen == []
    generate(model, tokenizer, "a", 3, threads=limit)  # the machine's own count is fine


@pytest.mark.parametrize("temperature", [10**400, 10**300, 1e308],
                         ids=["10**400", "10**300", "1e308"])
def test_huge_temperatures_are_refused_or_sampled_without_an_overflow(tokenizer, temperature):
    model = cycling_model(tokenizer, sharpness=1.0)
    if temperature == 10**400:  # beyond any float: not finite
        with pytest.raises(ValueError, match="temperature must be >= 0 and finite"):
            GenerationSettings(temperature=temperature)
    else:  # a flat distribution, not "Overflow when unpacking long"
        assert len(list(stream(model, tokenizer, "a", 5, temperature=temperature, seed=0,
                               stop_at_end=False))) == 5  # one piece per token


def test_sample_token_says_what_it_takes():
    logits = torch.tensor([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="one position's logits"):
        sample_token(logits[None], temperature=0.8)  # a batch row: (1, vocab)
    with pytest.raises(ValueError, match="tensor of logits"):
        sample_token([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        sample_token(logits, generator=0)
    with pytest.raises(ValueError, match=r"\(vocab,\)"):
        sample_token(torch.tensor([]))


def test_generate_says_which_argument_is_wrong(tokenizer):
    model = cycling_model(tokenizer)
    with pytest.raises(ValueError, match="model first, then the tokenizer"):
        generate(tokenizer, model, "a", 3)
    with pytest.raises(ValueError, match="tokenizer must have encode, decode and eot_id"):
        generate(model, "abc", "a", 3)
    with pytest.raises(ValueError, match="model must be a language model"):
        generate("haiku", tokenizer, "a", 3)
    with torch.device("meta"):
        ghost = cycling_model(tokenizer)
    with pytest.raises(ValueError, match="meta device"):
        generate(ghost, tokenizer, "a", 3)
    assert model.seen == []
