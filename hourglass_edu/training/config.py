"""Training settings: `TrainConfig` (every setting of a run) and the presets that fit a machine.

`PRESETS` pairs a model size with a `TrainConfig`: `smoke` (seconds, for tests and CI), `cpu`
(minutes on a laptop CPU) and `gpu` (about 20M parameters, under 30 minutes on one GPU).
`build_model(preset, vocab_size, seed=...)` turns a preset into an untrained `HourglassLM`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hourglass_edu.devices import resolve_device
from hourglass_edu.hourglass import HourglassConfig, HourglassLM
from hourglass_edu.loading import activation_bytes_per_token

__all__ = ["PRESETS", "TrainConfig", "build_model", "check_batch_fits", "get_preset"]

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class TrainConfig:
    """Every setting of a training run. `to_dict` / `from_dict` round-trip it exactly.

    Budget: the run stops after `steps` optimizer steps or `minutes` of training time (evaluation
    and checkpoint writing are not counted), whichever comes first; at least one must be set. With
    only a step budget the learning-rate schedule follows the step count and resuming is exact;
    with a time budget it follows the clock (`progress = elapsed / budget`), so the cosine still
    ends at the end of the budget, but two runs are no longer identical.

    Each optimizer step sees `batch_size * grad_accum` windows of `block_size` tokens, drawn at
    once and split into `grad_accum` micro-batches (so on resume the split may change, not the
    product). Under fp16 a step the gradient scaler skips is not counted (trainer.py).
    """

    steps: int | None = 2000
    minutes: float | None = None
    batch_size: int = 32
    block_size: int = 256
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1  # Linear weight matrices only; never norms, biases or embeddings
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float | None = 1.0  # max global gradient norm; None turns clipping off
    precision: str = "auto"  # "auto" (see precision.py), "bf16", "fp16" (CUDA only) or "fp32"
    compile: bool = False  # torch.compile the model (worth it on a GPU for long runs)
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    eval_every: int = 250  # steps between validation measurements
    eval_batches: int | None = 20  # fixed sample of this many batches; None = the whole split
    log_every: int = 10  # steps between history records
    checkpoint_every: int | None = None  # steps between checkpoints; None = at every evaluation
    seed: int = 0
    progress: bool = True  # show a tqdm progress bar

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the setting to change when a value makes no sense.

        Types first, for every field (a value read from a checkpoint or typed in Python may be
        anything): whole numbers are ints and not True/False (a bool is an int in Python, so
        ``steps=True`` would run one step), real numbers finite, switches True or False.
        """
        for field in dataclasses.fields(self):
            _check_type(field.name, getattr(self, field.name), _FIELD_KINDS[field.name])
        if self.steps is None and self.minutes is None:
            raise ValueError("TrainConfig needs a budget: set steps, minutes, or both")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be a positive integer or None, got {self.steps!r}")
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            raise ValueError(f"minutes must be positive and finite, or None, got {self.minutes!r}")
        for name in ("batch_size", "block_size", "grad_accum", "eval_every", "log_every"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("eval_batches", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got "
                             f"{self.weight_decay!r}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip!r}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be a whole number from 0 to 2**63 - 1 (torch's "
                             f"generators take 64 bits), got {_shown(self.seed)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)


# What each TrainConfig field holds: "int" (a whole number), "real" (an int or a float),
# "bool", "str", "device" (a name or a torch.device); a trailing "?" allows None.
_FIELD_KINDS = {
    "steps": "int?", "minutes": "real?", "batch_size": "int", "block_size": "int",
    "grad_accum": "int", "lr": "real", "min_lr_ratio": "real", "warmup_steps": "int",
    "weight_decay": "real", "beta1": "real", "beta2": "real", "grad_clip": "real?",
    "precision": "str", "compile": "bool", "device": "device", "eval_every": "int",
    "eval_batches": "int?", "log_every": "int", "checkpoint_every": "int?", "seed": "int",
    "progress": "bool",
}
_KIND_WORDS = {"int": "a positive integer", "real": "a number", "bool": "True or False",
               "str": "a string", "device": "a device name such as 'auto', 'cpu' or 'cuda'"}
_WHOLE_WORDS = {"warmup_steps": "an integer >= 0",  # the counts that may be 0
                "seed": "a whole number from 0 to 2**63 - 1"}
_MAX_WHOLE = 2**63  # beyond any count or seed torch takes (and printable in a message)


def _check_type(name: str, value: Any, kind: str) -> None:
    """Raise ValueError unless `value` is of `kind` (see `_FIELD_KINDS`)."""
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None and optional:
        return
    if kind == "bool":
        fits = isinstance(value, bool)
    elif isinstance(value, bool):
        fits = False
    elif kind == "int":
        fits = isinstance(value, int) and abs(value) < _MAX_WHOLE
    elif kind == "real":  # finite or not: the checks of each field say what it must be
        fits = isinstance(value, float) or isinstance(value, int) and abs(value) < _MAX_WHOLE
    elif kind == "device":
        fits = isinstance(value, (str, torch.device))
    else:
        fits = isinstance(value, str)
    if not fits:
        words = _WHOLE_WORDS.get(name, _KIND_WORDS[kind]) if kind == "int" else _KIND_WORDS[kind]
        raise ValueError(f"{name} must be {words}{' or None' if optional else ''}, "
                         f"got {_shown(value)}")


def _shown(value: Any) -> str:
    """`value` for a message, short (a huge int is not printed digit by digit)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _MAX_WHOLE:
        return f"a number of {value.bit_length():,} bits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Preset:
    """A model size and a training recipe that fit a machine.

    `model` holds `HourglassConfig` fields except `vocab_size` (which comes from the tokenizer);
    `build_model(preset, vocab_size)` turns it into a model.
    """

    name: str
    description: str
    model: dict[str, Any]
    train: TrainConfig


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke",
        description="a few seconds on a CPU: tests, CI and notebook smoke runs",
        model=dict(d_model=32, n_heads=2, structure="1@1 1@2 1@1", max_length=64, dropout=0.0),
        train=TrainConfig(
            steps=30, batch_size=8, block_size=64, lr=3e-3, warmup_steps=5, eval_every=15,
            eval_batches=4, log_every=5,
        ),
    ),
    "cpu": Preset(
        name="cpu",
        description="worth sampling from after about 10 minutes on 2 CPU cores",
        # Raced for `demo` (benchmarks/tune_demo.py): one full-resolution layer each side, six
        # shortened by 4, windows of 128, lr 8e-3 beat "2@1 4@3 2@1" / 256 / 2e-3 by 0.17 bpc in
        # 5 minutes: at this budget the characters per second decide, and they are cheap when
        # most layers see a quarter of them.
        model=dict(d_model=128, n_heads=4, structure="1@1 6@4 1@1", max_length=128, dropout=0.0),
        train=TrainConfig(
            steps=None, minutes=10.0, batch_size=32, block_size=128, lr=8e-3, warmup_steps=50,
            eval_every=100, eval_batches=10, log_every=10,
        ),
    ),
    # The corpora are small for 20M parameters: haiku and Lovecraft hold 2.8-2.9M training
    # characters, and a step sees 64 x 512 = 32,768 of them. 6000 steps made 67-70 passes over
    # them; 2000 make about 22 (a pass every ~90 steps). Repeated text is worth less with every
    # pass (Muennighoff et al. 2023, "Scaling Data-Constrained Language Models": a few passes are
    # as good as new text, after a few tens they add little), and a model this size then learns
    # the training text by heart. So the budget stops there, and dropout is 0.2 (0.1 before), as
    # in nanoGPT's character-level Shakespeare recipe (10M parameters on 1 MB). Weight decay
    # stays AdamW's usual 0.1 (weight matrices only): dropout is what acts on memorizing. best.pt
    # keeps the best validation if it turns upward anyway. The 28 minutes cap a slow GPU.
    "gpu": Preset(
        name="gpu",
        description="about 20M parameters, about 22 passes over a 3 MB corpus: good samples in "
        "under 30 minutes on one GPU",
        model=dict(d_model=384, n_heads=6, structure="2@1 8@3 2@1", max_length=512, dropout=0.2),
        train=TrainConfig(
            steps=2000, minutes=28.0, batch_size=64, block_size=512, lr=1e-3, warmup_steps=100,
            eval_every=250, eval_batches=40, log_every=20, weight_decay=0.1,
        ),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def build_model(preset: Preset | str, vocab_size: int, *, seed: int | None = None,
                **overrides: Any) -> nn.Module:
    """An untrained `HourglassLM` of the preset's size; `overrides` replace config fields.

    `seed` makes the initial weights reproducible without touching the caller's random state
    (the build runs inside `torch.random.fork_rng`); None draws them from torch's global RNG.
    """
    preset = get_preset(preset) if isinstance(preset, str) else preset
    fields = {**preset.model, **{k: v for k, v in overrides.items() if v is not None}}
    config = HourglassConfig(vocab_size=vocab_size, **fields)
    if seed is None:
        return HourglassLM(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HourglassLM(config)


# One micro-batch's activations beyond this cannot fit any single device this course targets.
MAX_BATCH_ACTIVATIONS = 256 << 30


def device_memory_bytes(device: torch.device) -> int | None:
    """All the memory of a device (not what is free now): a CUDA GPU's, or the machine's for
    the CPU; None where torch or the system cannot tell."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        with contextlib.suppress(AttributeError, ValueError, OSError):  # not on Windows
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def check_batch_fits(model, config: TrainConfig) -> None:
    """Refuse, before any work, a micro-batch whose activations (every linear layer's output,
    `loading.activation_bytes_per_token`: less than a step keeps) pass the memory of the device
    it would train on, or `MAX_BATCH_ACTIVATIONS` of any device. A typo like batch_size=
    1000000, or a damaged checkpoint's recipe that `finetune` continues, would otherwise end in
    a raw allocator error after gigabytes. `model` may be on `meta`."""
    needed = activation_bytes_per_token(model) * config.batch_size * config.block_size
    device = resolve_device(config.device)
    memory = device_memory_bytes(device)
    limit, where = MAX_BATCH_ACTIVATIONS, "any device"
    if memory is not None and memory < limit:
        limit, where = memory, f"the {device} memory ({memory / 2**30:,.0f} GiB)"
    if needed > limit:
        raise ValueError(
            f"`batch_size` {config.batch_size} x `block_size` {config.block_size} would need "
            f"about {needed / 2**30:,.0f} GiB of activations per micro-batch, more than "
            f"{where} holds: lower `batch_size` (`grad_accum` N keeps N micro-batches per step)"
        )


def check_sizes(model, data, config: TrainConfig) -> None:
    """Raise ValueError when the model, the data, the batch and the window size do not fit
    together."""
    check_batch_fits(model, config)
    model_config = getattr(model, "config", None)
    max_length = getattr(model_config, "max_length", None)
    if max_length is not None and config.block_size > max_length:
        raise ValueError(
            f"block_size {config.block_size} exceeds the model's max_length {max_length}: "
            "lower block_size or build the model with a larger max_length"
        )
    vocab_size = getattr(model_config, "vocab_size", None)
    if vocab_size is not None and vocab_size != data.tokenizer.vocab_size:
        raise ValueError(
            f"the model has vocab_size {vocab_size} but the tokenizer "
            f"{data.tokenizer.vocab_size}: build the model with vocab_size=tokenizer.vocab_size"
        )
    for split, fraction in (("train_ids", "smaller"), ("val_ids", "larger")):
        ids = getattr(data, split)
        if ids.numel() <= config.block_size:
            raise ValueError(
                f"{split} holds {ids.numel()} tokens, not more than block_size "
                f"{config.block_size}: lower `block_size`, use more text, or hold "
                f"out a {fraction} share of the documents (`val_fraction`)"
            )


def check_training_inputs(model, data, config) -> None:
    """Raise ValueError, saying what to pass, unless `model` is a torch module, `data` holds a
    tokenizer and 1-D token tensors (`PreparedData`) and `config` is a TrainConfig or None."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch module (build_model(...), HourglassLM(config)), "
                         f"got {type(model).__name__}")
    missing = [name for name in ("tokenizer", "train_ids", "val_ids") if not hasattr(data, name)]
    if missing:
        hint = (f" such as prepare_data({data!r:.40})" if isinstance(data, str)
                else " (prepare_data(corpus_name))")
        raise ValueError(f"data must be a PreparedData{hint}, got {type(data).__name__}, which "
                         f"lacks {', '.join(missing)}")
    for split in ("train_ids", "val_ids"):
        ids = getattr(data, split)
        if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.is_floating_point():
            raise ValueError(f"data.{split} must be a 1-D tensor of token ids "
                             f"(tokenizer.encode_documents(documents)), got {_described(ids)}")
    if config is not None and not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig or None (the defaults), got "
                         f"{type(config).__name__}"
                         + ("; pass TrainConfig(**settings)" if isinstance(config, dict) else ""))


def _described(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
