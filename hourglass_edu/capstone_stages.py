"""Staged checks for the capstone: a learner's piece taken through shape, causality and equality.

The machinery under `capstone_checks`: `_run` runs a piece's stages in order and stops at the
first failure, printing one line per stage (a learner's own error reported at the learner's own
line, never raised); the `_expect_*` stages compare shapes, outputs and which outputs move when
one input changes; `copy_weights` copies the library's weights into a learner's model by the
`RENAMES` between their parameter names, so that equality can be asked of the same weights.
"""

from __future__ import annotations

import copy
import re
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from hourglass_edu.hourglass import HourglassConfig, HourglassLM

__all__ = ["RENAMES", "TOLERANCE", "copy_weights", "my_name"]

TOLERANCE = 1e-5
#: A piece of a library weight name -> the same piece in the capstone's modules, in this order.
RENAMES = [
    (r"^embedding\.", "embed."), (r"^final_norm\.", "norm."), (r"^hourglass\.", "body."),
    (r"\.pre_blocks\.", ".pre."), (r"\.post_blocks\.", ".post."),
    (r"\.attn_norm\.", ".norm1."), (r"\.ff_norm\.", ".norm2."),
    (r"\.attn\.query_proj\.", ".attn.q."), (r"\.attn\.key_value_proj\.", ".attn.kv."),
    (r"\.attn\.out_proj\.", ".attn.out."),
    (r"\.ff\.expand\.", ".mlp.0."), (r"\.ff\.contract\.", ".mlp.2."),   # Linear, GELU, Linear
]
_D_MODEL, _N_HEADS = 16, 2
_STRUCTURE = "1@1 1@2 2@6 1@2 1@1"   # two nested shortenings, by 2 then by 3


class CheckFailed(Exception):
    """A stage of a check found a difference; the message says what to look at."""


def my_name(library_name: str) -> str:
    """'hourglass.inner.pre_blocks.0.attn.query_proj.weight' -> 'body.inner.pre.0.attn.q.weight'"""
    for pattern, replacement in RENAMES:
        library_name = re.sub(pattern, replacement, library_name)
    return library_name


def _renamer(prefix: str, renamed: str) -> Callable[[str], str]:
    """`my_name` for a part of a model (an attention, a block, a level), whose weight names lack
    the part's own prefix: `_renamer(".attn.", ".attn.")("query_proj.weight") == "q.weight"`."""
    return lambda name: my_name(prefix + name).removeprefix(renamed)


def copy_weights(source, target, rename: Callable[[str], str]):
    """Copy every weight of `source` into `target` as `rename(name)`; refuse any mismatch."""
    weights = {rename(name): value for name, value in source.state_dict().items()}
    expected = target.state_dict()
    missing, extra = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or extra:
        found = ([f"the library's {extra} have no place in yours"] if extra else []) + (
            [f"yours has {missing}, which the library does not"] if missing else [])
        raise CheckFailed(f"the weight names differ from the library's: {'; '.join(found)}; "
                          "name the attributes as the docstring says")
    for name, value in weights.items():
        if value.shape != expected[name].shape:
            raise CheckFailed(f"weight {name} has shape {tuple(expected[name].shape)}, the "
                              f"library's {tuple(value.shape)}")
    target.load_state_dict(weights)                 # strict: every name exactly once
    return target


# ---- running a check: stages, messages ----------------------------------------------------------


_NOT_THE_LEARNERS = (str(Path(torch.__file__).parent), str(Path(__file__).parent))


def _where(error: BaseException) -> str:
    """' (at: LINE)' for the last line of the learner's own code in the traceback, if any: the
    last frame outside torch, this package and installed libraries (einops, ...)."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if not frame.filename.startswith(_NOT_THE_LEARNERS)
              and "site-packages" not in frame.filename and "dist-packages" not in frame.filename]
    return f" (at: {frames[-1].line})" if frames and frames[-1].line else ""


def _run(piece: str, stages) -> bool:
    """Run `(label, stage)` pairs in order; print ✓ per stage passed, ✗ and stop at a failure."""
    for label, stage in stages:
        try:
            detail = stage()
        except NotImplementedError as error:
            if str(error).startswith("fill in "):
                print(f"✗ {piece}: not written yet: {error}")
                return False
            print(f"✗ {piece}, {label}: NotImplementedError: {error}{_where(error)}")
            return False
        except CheckFailed as error:
            print(f"✗ {piece}, {label}: {error}")
            return False
        except Exception as error:  # the learner's code raised: say what and where, briefly
            print(f"✗ {piece}, {label}: {type(error).__name__}: {error}{_where(error)}")
            return False
        print(f"✓ {piece}, {label}" + (f": {detail}" if detail else ""))
    return True


def _expect_shape(got, expected, what: str) -> str:
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"{what} should return a tensor, got {type(got).__name__}")
    if tuple(got.shape) != tuple(expected):
        raise CheckFailed(f"{what} returned shape {tuple(got.shape)}, expected {tuple(expected)}")
    return f"{tuple(expected)}"


def _expect_equal(got, expected, hint: str, what: str = "|yours - library|") -> str:
    difference = (got.float() - expected.float()).abs().max().item()
    if not difference <= TOLERANCE:
        raise CheckFailed(f"max {what} = {difference:.2e} > {TOLERANCE:.0e}: {hint}")
    return f"max {what} = {difference:.1e}"


def _change_vector(x, s):
    changed = x.clone()
    changed[:, s] = _randn(x.shape[-1], seed=100 + s)
    return changed


def _change_token(tokens, s):
    changed = tokens.clone()
    changed[:, s] = (changed[:, s] + 1) % 23
    return changed


def _expect_causal(function, x, visible: Callable[[int], int], hint: str,
                   change=_change_vector) -> str:
    """Change input position `s` of one sequence; outputs before `visible(s)` must not move and
    some output must. Checked for a few positions `s`: a perturbation check, not a proof.

    Every output before `first = visible(s)` is compared, `first - 1` included: a level that leaks
    exactly one step (an unshifted k=2 level reads the next character of its own pair) moves
    that output and no earlier one. The message names the latest output that moved."""
    with torch.no_grad():
        base = function(x)
        length, step = x.shape[1], max(1, x.shape[1] // 5)
        # Inputs of both parities are changed: a leak within pairs that start at an odd position
        # is seen only by changing an even input. Each of the odd ones must move some output (the
        # last input may move none: a shortening can leave it out of every complete group).
        must_move = set(range(1, length, step))
        for s in sorted(must_move | set(range(2, length, step))):
            out = function(change(x, s))
            first = visible(s)
            # How far each output position moved, largest over batch and features: (length,).
            movement = (out - base).abs().transpose(0, 1).flatten(1).amax(dim=1)
            earlier = movement[:first]
            if bool((earlier > 1e-6).any()):
                latest = int((earlier > 1e-6).nonzero().max())
                raise CheckFailed(
                    f"changing input {s} moved output {latest} by {earlier[latest]:.1e}, though "
                    f"no output before {first} may depend on it"
                    + (" (a leak of exactly one step)" if latest == first - 1 else "")
                    + f": {hint}")
            if movement.max().item() == 0 and s in must_move:
                raise CheckFailed(f"changing input {s} moved no output at all")
    return "no output moved when a later input changed (one sequence, a few positions)"


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _library_model(**settings) -> HourglassLM:
    config = HourglassConfig(vocab_size=23, d_model=_D_MODEL, n_heads=_N_HEADS,
                             structure=_STRUCTURE, **settings)
    torch.manual_seed(0)
    return HourglassLM(config).eval()


def _randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """`module` in eval mode with every weight drawn at random, so that no weight is a default
    (a zero bias, a LayerNorm's ones) behind which a mistake could hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module.eval()


def _build(make: Callable[[], torch.nn.Module], what: str) -> torch.nn.Module:
    module = make()
    if not isinstance(module, torch.nn.Module):
        raise CheckFailed(f"{what} should build an nn.Module, got {type(module).__name__}")
    return module.eval()


# ---- the pieces of section 2 --------------------------------------------------------------------


def _check_level(piece: str, make_level, library_level, hint: str, *,
                 shift_flag: bool = True) -> bool:
    """Shape, causality, (`shift_flag`: switching `shift` off must leak), equality."""
    x = _randn(2, 11, _D_MODEL)
    levels = [(1, 1, 2), (1, 1, 3), (2, 0, None)]
    state = {}

    def shape():
        state["mine"] = _build(lambda: make_level(levels), f"{piece}(levels, d_model, n_heads)")
        with torch.no_grad():
            return _expect_shape(state["mine"](x), x.shape, "level(x)")

    def causal():
        return _expect_causal(state["mine"], x[:1], lambda s: s,
                              "the order must be pad -> shift by k - 1 -> shorten")

    def shift_off_leaks():
        leaky = copy.deepcopy(state["mine"])
        for module in leaky.modules():
            if hasattr(module, "shift"):
                module.shift = False
        try:
            _expect_causal(leaky, x[:1], lambda s: s, "")
        except CheckFailed:
            return "with shift = False a later input moves an earlier output, as it must"
        raise CheckFailed("with every shift = False your level is still causal: forward must "
                          "skip the shift when self.shift is False (section 4 switches it off "
                          "to show the leak)")

    def equal():
        library = _randomized(library_level)
        copy_weights(library, state["mine"], _renamer("hourglass.", "body."))
        with torch.no_grad():
            return _expect_equal(state["mine"](x), library(x), hint)

    stages = [("shape", shape), ("causality", causal),
              *([("shift = False leaks", shift_off_leaks)] if shift_flag else []),
              ("equal to HourglassLevel", equal)]
    return _run(piece, stages)

def _check_model(piece: str, make_model, library: HourglassLM, device) -> bool:
    tokens = torch.randint(23, (2, 101), generator=torch.Generator().manual_seed(2)).to(device)
    state = {}

    def shape():
        state["mine"] = _build(make_model, piece).to(device)
        with torch.no_grad():
            return _expect_shape(state["mine"](tokens), (2, 101, 23), "model(tokens)")

    def causal():
        return _expect_causal(state["mine"], tokens[:1], lambda s: s, "a level leaks the future",
                              change=_change_token)

    def equal():
        copy_weights(library, state["mine"], my_name)
        with torch.no_grad():
            return _expect_equal(state["mine"](tokens), library.to(device)(tokens),
                                 "embedding -> body -> final LayerNorm -> head (no bias)")

    return _run(piece, [("shape", shape), ("causality", causal),
                        ("equal to HourglassLM", equal)])
