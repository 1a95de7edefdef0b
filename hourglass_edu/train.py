"""Training: the loop, bits per character, presets, checkpoints, exact resume and fine-tuning.

The pieces, in the order a run uses them:

- `TrainConfig` holds every setting of a run (budget, batch, schedule, precision, evaluation);
  `PRESETS` pairs a model size with a `TrainConfig` (`smoke`, `cpu`, `gpu`).
- `train(model, data, config)` runs AdamW with a warmup-then-cosine learning rate, gradient
  clipping and accumulation, bf16 autocast where the hardware has it, and a tqdm progress bar. It
  stops after `config.steps` optimizer steps or `config.minutes` of training, whichever comes first,
  and returns a `History` (one record per logged step; `History.plot()` draws it).
- `evaluate_bpc(model, ids, ...)` measures bits per character: the mean cross-entropy in nats
  divided by ln 2. Every token counts as a character, including `<eot>`, which the model must
  predict to end a document.
- `save_checkpoint` / `load_checkpoint`: one file holding the model and train configs, tokenizer,
  weights, optimizer, schedule position, history and every random-number state, written atomically
  and read with `torch.load(weights_only=True)`, so a file cannot run code when it is loaded.
  Resuming a step-budgeted run gives bit-for-bit the losses of a run that never stopped.
- `prepare_finetuning(checkpoint, corpus)` starts from a trained model and grows its vocabulary for
  characters the new corpus has and the old one lacked (see `extend_vocabulary`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pickle
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

CHECKPOINT_FORMAT = "hourglass_edu.checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
PRECISIONS = ("auto", "bf16", "fp32")
LN2 = math.log(2.0)

# Settings that may change between a run and its resumption: they change what is printed or how
# fast it runs, never which numbers the run computes.
RESUMABLE_CHANGES = frozenset(
    {"progress", "device", "compile", "log_every", "eval_every", "checkpoint_every"}
)
# Settings that may change on resume although they change the numbers: a longer (or shorter)
# budget, or a lower learning rate after a divergence. The schedule continues from where the run
# is under the new values; `Trainer.resume` reports each change.
BUDGET_CHANGES = frozenset({"steps", "minutes", "lr"})


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    """Every setting of a training run. `to_dict` / `from_dict` round-trip it exactly.

    Budget: the run stops after `steps` optimizer steps or `minutes` of training time (evaluation
    and checkpoint writing are not counted), whichever comes first; at least one must be set. With
    only a step budget the learning-rate schedule follows the step count and resuming is exact;
    with a time budget it follows the clock (`progress = elapsed / budget`), so the cosine still
    ends at the end of the budget, but two runs are no longer identical.

    Each optimizer step sees `batch_size * grad_accum` windows of `block_size` tokens.
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
    precision: str = "auto"  # "auto" (bf16 where the hardware is fast at it), "bf16" or "fp32"
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
        """Raise ValueError naming the setting to change when a value makes no sense."""
        if self.steps is None and self.minutes is None:
            raise ValueError("TrainConfig needs a budget: set steps, minutes, or both")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be a positive integer or None, got {self.steps!r}")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be positive or None, got {self.minutes!r}")
        for name in ("batch_size", "block_size", "grad_accum", "eval_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("eval_batches", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip!r}")
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
        model=dict(d_model=128, n_heads=4, structure="2@1 4@3 2@1", max_length=256, dropout=0.0),
        train=TrainConfig(
            steps=None, minutes=10.0, batch_size=16, block_size=256, lr=2e-3, warmup_steps=50,
            eval_every=100, eval_batches=10, log_every=10,
        ),
    ),
    "gpu": Preset(
        name="gpu",
        description="about 20M parameters: good samples in under 30 minutes on one GPU",
        model=dict(d_model=384, n_heads=6, structure="2@1 8@3 2@1", max_length=512, dropout=0.1),
        train=TrainConfig(
            steps=6000, minutes=28.0, batch_size=64, block_size=512, lr=1e-3, warmup_steps=200,
            eval_every=500, eval_batches=40, log_every=20, weight_decay=0.1,
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
    from hourglass_edu.hourglass import HourglassConfig, HourglassLM

    preset = get_preset(preset) if isinstance(preset, str) else preset
    fields = {**preset.model, **{k: v for k, v in overrides.items() if v is not None}}
    config = HourglassConfig(vocab_size=vocab_size, **fields)
    if seed is None:
        return HourglassLM(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return HourglassLM(config)


# --------------------------------------------------------------------------------------------
# Devices and precision


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU; use device='cpu'")
    return device


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has bf16 matrix units (AMX) or bf16 vector instructions (AVX512-BF16)."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # a private probe: never let it break training
            pass
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" means "bf16" on GPUs that support it and on CPUs with bf16 units, else "fp32"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def autocast_context(precision: str, device: torch.device):
    """bf16 autocast for the forward pass (weights and optimizer state stay fp32)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# Loss and evaluation


def language_model_loss(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Next-token cross-entropy in nats ("mean" over targets, or "sum"), computed in fp32 even
    under autocast. Targets equal to -100 (`data.IGNORE_INDEX`) are skipped.

    logits: (batch, length, vocab); targets: (batch, length).
    """
    return F.cross_entropy(
        rearrange(logits.float(), "batch length vocab -> (batch length) vocab"),
        rearrange(targets, "batch length -> (batch length)"),
        ignore_index=-100,
        reduction=reduction,
    )


@torch.no_grad()
def evaluate_bpc(
    model: nn.Module,
    ids: torch.Tensor,
    *,
    batch_size: int = 32,
    block_size: int = 256,
    max_batches: int | None = None,
    seed: int = 1234,
    device: str | torch.device | None = None,
    precision: str = "fp32",
) -> float:
    """Bits per character of `model` on the token stream `ids` (1-D).

    `max_batches=None` covers the whole split once (`iter_eval_batches`); an integer draws that many
    batches of random windows from a generator seeded with `seed`, so the sample is the same at
    every call (comparable across steps and runs) and no other random state is touched.
    """
    from hourglass_edu.data import iter_eval_batches, sample_batch

    if ids.dim() != 1:
        raise ValueError(f"ids must be a 1-D token stream, got shape {tuple(ids.shape)}")
    if ids.numel() < 2:
        raise ValueError("the evaluation split needs at least 2 tokens")
    if device is None:
        device = next(model.parameters()).device
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    block_size = min(block_size, ids.numel() - 1)
    if max_batches is None:
        batches: Iterable = iter_eval_batches(ids, batch_size, block_size)
    else:
        generator = torch.Generator().manual_seed(seed)
        batches = (sample_batch(ids, batch_size, block_size, generator) for _ in range(max_batches))

    was_training = model.training
    model.eval()
    total_nats, total_tokens = 0.0, 0
    try:
        for inputs, targets in batches:
            inputs, targets = inputs.to(device), targets.to(device)
            with autocast_context(precision, device):
                logits = model(inputs)
            total_nats += language_model_loss(logits, targets, reduction="sum").item()
            total_tokens += int((targets != -100).sum())
    finally:
        model.train(was_training)
    return total_nats / total_tokens / LN2


# --------------------------------------------------------------------------------------------
# History


@dataclass
class History:
    """What a run measured: one record (a dict) per logged step.

    Record keys: `step` (optimizer steps done), `tokens` (training tokens seen), `elapsed`
    (training seconds, evaluation excluded), `train_loss` (nats, mean since the previous record),
    `train_bpc`, `val_bpc` (None where no evaluation ran), `lr`.
    `pandas.DataFrame(history.records)` gives a table.
    """

    records: list[dict[str, Any]] = field(default_factory=list)

    def append(self, **record: Any) -> None:
        self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def column(self, key: str) -> list:
        return [record[key] for record in self.records if record.get(key) is not None]

    @property
    def last_val_bpc(self) -> float | None:
        values = self.column("val_bpc")
        return values[-1] if values else None

    @property
    def best_val_bpc(self) -> float | None:
        values = self.column("val_bpc")
        return min(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        return {"records": [dict(record) for record in self.records]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> History:
        return cls(records=[dict(record) for record in values["records"]])

    def plot(self, title: str | None = None):
        """A matplotlib Figure: bits per character against steps (left) and training time."""
        from matplotlib.figure import Figure  # not pyplot: no global figure list, no GUI window

        figure = Figure(figsize=(10, 3.6))
        axes = figure.subplots(1, 2, sharey=True)
        train = [r for r in self.records if r.get("train_bpc") is not None]
        val = [r for r in self.records if r.get("val_bpc") is not None]
        for axis, x_key, x_label in (
            (axes[0], "step", "optimizer step"),
            (axes[1], "elapsed", "training time (s)"),
        ):
            axis.plot([r[x_key] for r in train], [r["train_bpc"] for r in train],
                      label="train", alpha=0.8)
            axis.plot([r[x_key] for r in val], [r["val_bpc"] for r in val], "o-",
                      label="validation")
            axis.set_xlabel(x_label)
            axis.grid(alpha=0.3)
        axes[0].set_ylabel("bits per character")
        axes[0].legend()
        if title:
            figure.suptitle(title)
        figure.tight_layout()
        return figure


# --------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> Path:
    """Write `checkpoint` to `path` atomically: a temporary file in the same directory, flushed to
    disk, then renamed over `path`, so a crash leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


REQUIRED_KEYS = (
    "format", "version", "model_config", "tokenizer", "train_config", "model", "optimizer",
    "step", "tokens_seen", "elapsed", "history", "rng",
)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint written by `train`. A directory means `DIR/checkpoint.pt`.

    Uses `torch.load(weights_only=True)`: only tensors and plain containers are accepted, so a file
    crafted to run code when unpickled is refused before anything runs. Raises FileNotFoundError
    for a missing file and ValueError for a truncated, foreign or unsafe one.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: a training run writes OUT/{CHECKPOINT_NAME}; check the path"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines()]
        reason = next((line for line in lines if "Unsupported" in line or "error:" in line), "")
        raise ValueError(
            f"refused to load {path}: it holds Python objects other than tensors and plain "
            "containers, which could run code when unpickled (torch.load with weights_only=True "
            f"said: {reason}). hourglass_edu checkpoints never contain such objects; only open "
            "files from sources you trust"
        ) from None
    except Exception as error:  # zip/pickle/EOF errors: one clear message for all of them
        raise ValueError(
            f"cannot read {path} as a checkpoint: the file is truncated, damaged or not a PyTorch "
            f"file ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''})"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is a PyTorch file but not an hourglass_edu checkpoint (it has no "
            f"'format': {CHECKPOINT_FORMAT!r} entry)"
        )
    if checkpoint["version"] > CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint version {checkpoint['version']}, newer than this library reads "
            f"({CHECKPOINT_VERSION}); upgrade hourglass_edu"
        )
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise ValueError(f"{path} is an incomplete hourglass_edu checkpoint: missing {missing}")
    return checkpoint


def model_from_checkpoint(checkpoint: dict | str | os.PathLike, device: str = "cpu"):
    """Rebuild `(model, tokenizer)` from a checkpoint (a dict from `load_checkpoint`, or a path).

    The model is in eval mode on `device`.
    """
    from hourglass_edu.data import CharTokenizer
    from hourglass_edu.hourglass import HourglassConfig, HourglassLM

    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(checkpoint)
    model = HourglassLM(HourglassConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    tokenizer = CharTokenizer.from_dict(checkpoint["tokenizer"])
    return model.to(resolve_device(device)).eval(), tokenizer


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """`(model, tokenizer)` from a checkpoint file or run directory, ready to sample from."""
    return model_from_checkpoint(load_checkpoint(path), device=device)


def _config_differences(saved: dict, current: dict, prefix: str, ignore=frozenset()) -> list[str]:
    lines = []
    for key in sorted(set(saved) | set(current)):
        if key in ignore:
            continue
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if old != new:
            lines.append(f"{prefix}{key}: checkpoint {old!r}, now {new!r}")
    return lines


# --------------------------------------------------------------------------------------------
# The training loop


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stopped being finite."""


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: weight matrices of Linear layers decay; everything else does not.

    Norm scales, biases, embeddings (even when tied to the output layer) and learned vectors such
    as a learned shift fill are not "weights that multiply an input", and decaying them only pulls
    useful values towards zero.
    """
    embedding_ids = {
        id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding)
    }
    linear_weight_ids = {
        id(module.weight) for module in model.modules()
        if isinstance(module, nn.Linear) and id(module.weight) not in embedding_ids
    }
    decay, no_decay = [], []
    for parameter in model.parameters():  # model.parameters() already lists tied tensors once
        if not parameter.requires_grad:
            continue
        (decay if id(parameter) in linear_weight_ids else no_decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def learning_rate(config: TrainConfig, step: int, elapsed: float) -> float:
    """Linear warmup over `warmup_steps`, times a cosine from `lr` down to `lr * min_lr_ratio`.

    The cosine follows `progress` in [0, 1]: the fraction of the step budget done, or of the time
    budget, whichever is further along.
    """
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    progress = 0.0
    if config.steps is not None:
        progress = max(progress, step / config.steps)
    if config.minutes is not None:
        progress = max(progress, elapsed / (60.0 * config.minutes))
    progress = min(progress, 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.lr * warmup * (config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine)


class Trainer:
    """Owns the state of one run: model, optimizer, schedule position, history, random generators.

    `train(...)` is the usual entry point; use a Trainer directly to step through a run or inspect
    its optimizer. `callbacks` are called as `callback(trainer)` after every optimizer step.
    """

    def __init__(
        self,
        model: nn.Module,
        data,
        config: TrainConfig | None = None,
        *,
        checkpoint_path: str | os.PathLike | None = None,
        callbacks: Sequence[Callable[[Trainer], None]] = (),
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.config = config = config if config is not None else TrainConfig()
        config.validate()
        self.data = data
        self.tokenizer = data.tokenizer
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        self.model = model.to(self.device)
        self._check_sizes()
        self.forward = torch.compile(self.model) if config.compile else self.model
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model, config.weight_decay), lr=config.lr,
            betas=(config.beta1, config.beta2),
        )
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.callbacks = list(callbacks)
        self.metadata = dict(metadata or {})
        self.history = History()
        self.step = 0
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.last_checkpoint_step: int | None = None
        self.resumed_changes: list[str] = []  # budget / lr changes accepted by resume()
        self.stop_requested = False
        # Set while a step is under way: the random state it began with, and whether the weights
        # are being updated (see _save_after_interrupt).
        self._step_start_rng: dict[str, Any] | None = None
        self._updating = False
        # Batches come from their own generator; dropout uses torch's global one, seeded here so
        # that a fresh run is reproducible (both are saved in checkpoints and restored on resume).
        self.batch_generator = torch.Generator().manual_seed(config.seed)
        torch.manual_seed(config.seed + 1)

    # ----- sanity checks
    def _check_sizes(self) -> None:
        model_config = getattr(self.model, "config", None)
        max_length = getattr(model_config, "max_length", None)
        if max_length is not None and self.config.block_size > max_length:
            raise ValueError(
                f"block_size {self.config.block_size} exceeds the model's max_length {max_length}: "
                "lower block_size or build the model with a larger max_length"
            )
        vocab_size = getattr(model_config, "vocab_size", None)
        if vocab_size is not None and vocab_size != self.tokenizer.vocab_size:
            raise ValueError(
                f"the model has vocab_size {vocab_size} but the tokenizer "
                f"{self.tokenizer.vocab_size}: build the model with vocab_size=tokenizer.vocab_size"
            )
        for split in ("train_ids", "val_ids"):
            ids = getattr(self.data, split)
            if ids.numel() <= self.config.block_size:
                raise ValueError(
                    f"{split} holds {ids.numel()} tokens, not more than block_size "
                    f"{self.config.block_size}: lower block_size or use more text"
                )

    # ----- state: everything a checkpoint holds
    def rng_state(self) -> dict[str, Any]:
        state = {
            "batch": self.batch_generator.get_state(),
            "torch_cpu": torch.get_rng_state(),
            "python": random.getstate(),
        }
        if torch.cuda.is_available():
            state["torch_cuda"] = torch.cuda.get_rng_state_all()
        return state

    def set_rng_state(self, state: dict[str, Any]) -> None:
        self.batch_generator.set_state(state["batch"])
        torch.set_rng_state(state["torch_cpu"])
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if "torch_cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["torch_cuda"])

    def data_fingerprint(self) -> dict[str, Any]:
        corpus = getattr(self.data, "corpus", None)
        return {
            "corpus": getattr(corpus, "name", None),
            "train_tokens": int(self.data.train_ids.numel()),
            "val_tokens": int(self.data.val_ids.numel()),
            "train_sum": int(self.data.train_ids.sum()),
        }

    def checkpoint(self, rng_state: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run's state as plain containers and tensors (what `save_checkpoint` writes)."""
        model_config = getattr(self.model, "config", None)
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model_config": model_config.to_dict() if model_config is not None else {},
            "tokenizer": self.tokenizer.to_dict(),
            "train_config": self.config.to_dict(),
            "data": self.data_fingerprint(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "elapsed": self.elapsed,
            "history": self.history.to_dict(),
            "rng": rng_state if rng_state is not None else self.rng_state(),
            "metadata": dict(self.metadata),
            "torch_version": str(torch.__version__),  # TorchVersion is not a plain str
        }

    def save(self, path: str | os.PathLike | None = None, rng_state=None) -> Path:
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("no checkpoint path: pass one to save() or to the Trainer")
        save_checkpoint(path, self.checkpoint(rng_state))
        self.last_checkpoint_step = self.step
        return path

    def differences(self, checkpoint: dict[str, Any]) -> list[str]:
        """How this run's configuration differs from a checkpoint's (empty when resumable)."""
        model_config = getattr(self.model, "config", None)
        current_model = model_config.to_dict() if model_config is not None else {}
        lines = _config_differences(checkpoint["model_config"], current_model, "model.")
        lines += _config_differences(
            checkpoint["train_config"], self.config.to_dict(), "train.",
            RESUMABLE_CHANGES | BUDGET_CHANGES,
        )
        if checkpoint["tokenizer"] != self.tokenizer.to_dict():
            lines.append("tokenizer: the vocabularies differ")
        lines += _config_differences(checkpoint.get("data", {}), self.data_fingerprint(), "data.")
        return lines

    def resume(self, checkpoint: dict[str, Any] | str | os.PathLike) -> None:
        """Continue the run stored in `checkpoint`; refuses (ValueError) if any setting differs."""
        if not isinstance(checkpoint, dict):
            checkpoint = load_checkpoint(checkpoint)
        differences = self.differences(checkpoint)
        if differences:
            raise ValueError(
                "refusing to resume: this run's configuration differs from the checkpoint's:\n  "
                + "\n  ".join(differences)
                + "\nResume with the same settings, or start a new run in another directory."
            )
        self.resumed_changes = _config_differences(
            {key: checkpoint["train_config"].get(key) for key in BUDGET_CHANGES},
            {key: getattr(self.config, key) for key in BUDGET_CHANGES}, "",
        )
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.step = checkpoint["step"]
        self.tokens_seen = checkpoint["tokens_seen"]
        self.elapsed = checkpoint["elapsed"]
        self.history = History.from_dict(checkpoint["history"])
        self.metadata = {**checkpoint.get("metadata", {}), **self.metadata}
        self.set_rng_state(checkpoint["rng"])
        self.last_checkpoint_step = self.step

    # ----- the loop
    def finished(self) -> bool:
        config = self.config
        if config.steps is not None and self.step >= config.steps:
            return True
        return config.minutes is not None and self.elapsed >= 60.0 * config.minutes

    def evaluate(self) -> float:
        return evaluate_bpc(
            self.model, self.data.val_ids, batch_size=self.config.batch_size,
            block_size=self.config.block_size, max_batches=self.config.eval_batches,
            seed=self.config.seed + 1234, device=self.device, precision=self.precision,
        )

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over `grad_accum` micro-batches; returns (loss in nats, lr)."""
        from hourglass_edu.data import sample_batch

        config = self.config
        self._step_start_rng = self.rng_state()
        lr = learning_rate(config, self.step, self.elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total_loss = torch.zeros((), device=self.device)
        for _ in range(config.grad_accum):
            inputs, targets = sample_batch(
                self.data.train_ids, config.batch_size, config.block_size, self.batch_generator
            )
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            with autocast_context(self.precision, self.device):
                logits = self.forward(inputs)
            loss = language_model_loss(logits, targets) / config.grad_accum
            loss.backward()
            total_loss += loss.detach()
        max_norm = config.grad_clip if config.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        # One host-device sync per step: both numbers must be finite before the update is applied.
        loss_value, norm_value = torch.stack([total_loss, grad_norm.float()]).tolist()
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            raise TrainingDiverged(self._divergence_message(loss_value, norm_value, lr))
        self._updating = True
        self.optimizer.step()
        self.step += 1
        self.tokens_seen += config.batch_size * config.block_size * config.grad_accum
        self._updating = False
        self._step_start_rng = None
        return loss_value, lr

    def _divergence_message(self, loss: float, norm: float, lr: float) -> str:
        kept = (
            f"the last good checkpoint ({self.checkpoint_path}, step {self.last_checkpoint_step}) "
            "is kept unchanged"
            if self.last_checkpoint_step is not None
            else "no checkpoint had been written yet"
        )
        return (
            f"training stopped at step {self.step + 1}: the loss became {loss} (gradient norm "
            f"{norm}); the update was not applied and {kept}. Try a lower learning rate (now "
            f"{lr:.3g}), precision='fp32', or a smaller grad_clip"
        )

    def _should_checkpoint(self, evaluated: bool) -> bool:
        if self.checkpoint_path is None:
            return False
        if self.config.checkpoint_every is None:
            return evaluated
        return self.step % self.config.checkpoint_every == 0

    def _progress_bar(self):
        from tqdm.auto import tqdm

        config = self.config
        if config.steps is not None:
            return tqdm(total=config.steps, initial=self.step, unit="step",
                        disable=not config.progress, dynamic_ncols=True)
        return tqdm(total=round(60 * config.minutes), initial=round(self.elapsed), unit="s",
                    disable=not config.progress, dynamic_ncols=True,
                    bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt}s [{elapsed}{postfix}]")

    def run(self) -> History:
        """Train until the budget is spent; returns the history (also at `self.history`)."""
        config = self.config
        bar = self._progress_bar()
        window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
        try:
            with _sigint_finishes_step(self):
                while not self.finished():
                    started = time.perf_counter()
                    loss, lr = self.train_step()
                    if self.device.type == "cuda":
                        torch.cuda.synchronize(self.device)
                    seconds = time.perf_counter() - started
                    self.elapsed += seconds
                    window_loss += loss
                    window_steps += 1
                    window_tokens += config.batch_size * config.block_size * config.grad_accum
                    window_time += seconds
                    if config.steps is not None:
                        bar.update(1)
                    else:
                        bar.n = min(round(self.elapsed), bar.total)
                        bar.refresh()

                    evaluate = self.step % config.eval_every == 0 or self.finished()
                    if evaluate or self.step % config.log_every == 0:
                        mean_loss = window_loss / window_steps
                        val_bpc = self.evaluate() if evaluate else None
                        self.history.append(
                            step=self.step, tokens=self.tokens_seen, elapsed=self.elapsed,
                            train_loss=mean_loss, train_bpc=mean_loss / LN2, val_bpc=val_bpc,
                            lr=lr,
                        )
                        tokens_per_second = window_tokens / max(window_time, 1e-9)
                        postfix = {
                            "loss": f"{mean_loss:.3f}", "bpc": f"{mean_loss / LN2:.3f}",
                            "lr": f"{lr:.2e}", "tok/s": f"{tokens_per_second:,.0f}",
                        }
                        if self.history.last_val_bpc is not None:
                            postfix["val_bpc"] = f"{self.history.last_val_bpc:.3f}"
                        bar.set_postfix(postfix, refresh=False)
                        window_loss, window_steps, window_tokens, window_time = 0.0, 0, 0, 0.0
                        if self._should_checkpoint(evaluate):
                            self.save()
                    for callback in self.callbacks:
                        callback(self)
                    if self.stop_requested:
                        raise KeyboardInterrupt
                if self.checkpoint_path is not None and self.last_checkpoint_step != self.step:
                    self.save()
        except KeyboardInterrupt:
            self._save_after_interrupt()
            raise
        finally:
            bar.close()
        return self.history

    def _save_after_interrupt(self) -> None:
        if self.checkpoint_path is None:
            return
        if self._updating:
            # Cut off inside optimizer.step(): some weights may hold the new values and some the
            # old, which no step number describes. Keep the previous checkpoint instead.
            print(f"interrupted during a weight update: kept {self.checkpoint_path} "
                  f"(step {self.last_checkpoint_step})")
            return
        # The interrupt came between steps or inside one before its update: weights and optimizer
        # are exactly those after `self.step` steps; if a step was under way, the random state to
        # save is the one it began with, so that resuming replays it.
        self.save(rng_state=self._step_start_rng)
        self._step_start_rng = None
        print(f"interrupted: saved {self.checkpoint_path} at step {self.step}; resume to continue")


@contextlib.contextmanager
def _sigint_finishes_step(trainer: Trainer):
    """While training in the main thread, a first Ctrl-C asks the loop to stop after the current
    step (it then saves a checkpoint and raises KeyboardInterrupt); a second one interrupts at
    once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:  # someone else handles Ctrl-C: leave it alone
        yield
        return

    def handler(signum, frame):
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        print("\nCtrl-C: stopping after this step and saving a checkpoint (again to stop now)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def train(
    model: nn.Module,
    data,
    config: TrainConfig | None = None,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callable[[Trainer], None]] = (),
    metadata: dict[str, Any] | None = None,
) -> History:
    """Train `model` (in place) on `data` (a `PreparedData`: tokenizer, train_ids, val_ids).

    checkpoint_path: where to keep the run's checkpoint (written at every evaluation, or every
        `config.checkpoint_every` steps, at the end and on Ctrl-C); None trains without saving.
    resume: continue the run stored at `checkpoint_path` (same configuration required).
    overwrite: allow a fresh run to replace an existing checkpoint at `checkpoint_path`.

    Returns the `History`. Raises `TrainingDiverged` if the loss stops being finite.
    """
    trainer = Trainer(model, data, config, checkpoint_path=checkpoint_path, callbacks=callbacks,
                      metadata=metadata)
    if checkpoint_path is not None:
        exists = Path(checkpoint_path).exists()
        if resume:
            if not exists:
                raise FileNotFoundError(f"nothing to resume: no checkpoint at {checkpoint_path}")
            trainer.resume(checkpoint_path)
            for change in trainer.resumed_changes:
                print(f"resuming with a changed setting: {change}")
        elif exists and not overwrite:
            raise ValueError(
                f"{checkpoint_path} already holds a checkpoint: resume it (resume=True / --resume) "
                "or choose another path (overwrite=True replaces it)"
            )
    elif resume:
        raise ValueError("resume=True needs a checkpoint_path")
    return trainer.run()


# --------------------------------------------------------------------------------------------
# Fine-tuning


def extend_vocabulary(model: nn.Module, tokenizer, new_chars: Sequence[str]):
    """Grow `tokenizer` and `model` by `new_chars`; returns `(model, tokenizer)` (new objects).

    Existing characters keep their ids, so everything the model learned stays where it was. The new
    characters get ids after the old ones; their embedding rows and output-layer rows start as the
    mean of the existing rows (an "average character": plausible, not random noise). The change is
    found without knowing layer names: every parameter whose size along some axis equals the old
    vocabulary size is grown along that axis.
    """
    from hourglass_edu.data import CharTokenizer
    from hourglass_edu.hourglass import HourglassConfig, HourglassLM

    new_chars = [c for c in dict.fromkeys(new_chars) if c not in set(tokenizer.chars)]
    if not new_chars:
        return model, tokenizer
    old_vocab = tokenizer.vocab_size
    values = tokenizer.to_dict()
    values["chars"] = list(tokenizer.chars) + new_chars
    grown_tokenizer = CharTokenizer.from_dict(values)
    old_ids = tokenizer.encode("".join(tokenizer.chars))
    for char, token_id in zip(tokenizer.chars, old_ids, strict=True):
        if grown_tokenizer.encode(char) != [token_id]:
            raise RuntimeError("extending the vocabulary moved an existing character's id")
    new_vocab = grown_tokenizer.vocab_size

    config = HourglassConfig.from_dict({**model.config.to_dict(), "vocab_size": new_vocab})
    grown = HourglassLM(config)
    old_state = model.state_dict()
    new_state = grown.state_dict()
    for name, new_value in new_state.items():
        old_value = old_state[name]
        if old_value.shape == new_value.shape:
            new_state[name] = old_value.clone()
            continue
        axes = [a for a in range(old_value.dim())
                if old_value.shape[a] == old_vocab and new_value.shape[a] == new_vocab]
        if len(axes) != 1:
            raise RuntimeError(f"cannot grow parameter {name}: {tuple(old_value.shape)} -> "
                               f"{tuple(new_value.shape)}")
        axis = axes[0]
        mean_row = old_value.mean(dim=axis, keepdim=True)
        extra = mean_row.expand(*[new_vocab - old_vocab if a == axis else s
                                  for a, s in enumerate(old_value.shape)])
        new_state[name] = torch.cat([old_value, extra], dim=axis)
    grown.load_state_dict(new_state)
    return grown, grown_tokenizer


@dataclass
class FineTuning:
    """What `prepare_finetuning` returns: a model and data ready for `train`."""

    model: nn.Module
    data: Any  # PreparedData encoded with the (possibly grown) base tokenizer
    added_chars: list[str]
    base_checkpoint: dict[str, Any]

    @property
    def metadata(self) -> dict[str, Any]:
        base = self.base_checkpoint
        return {
            "finetuned_from": {
                "corpus": base.get("data", {}).get("corpus"),
                "step": base["step"],
                "val_bpc": History.from_dict(base["history"]).last_val_bpc,
            },
            "added_chars": "".join(self.added_chars),
        }


def prepare_finetuning(checkpoint, corpus, *, val_fraction: float = 0.05, seed: int = 0,
                       data_dir=None) -> FineTuning:
    """Load a trained model and get it ready to continue on another corpus.

    Characters of the new corpus that the base vocabulary lacks are added (`extend_vocabulary`)
    and listed in `.added_chars`; every poem/story is still laid out `<eot> doc <eot> ...`, so a
    model fine-tuned on haiku learns to end a poem with `<eot>` and generation stops by itself.
    """
    from hourglass_edu.data import load_corpus, prepare_data

    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(checkpoint)
    model, tokenizer = model_from_checkpoint(checkpoint)
    if isinstance(corpus, (str, os.PathLike)):
        corpus = load_corpus(corpus, data_dir=data_dir)
    known = set(tokenizer.chars)
    added = sorted({char for document in corpus.documents for char in document} - known)
    model, tokenizer = extend_vocabulary(model, tokenizer, added)
    data = prepare_data(corpus, val_fraction=val_fraction, seed=seed, tokenizer=tokenizer)
    return FineTuning(model=model.train(), data=data, added_chars=added,
                      base_checkpoint=checkpoint)
