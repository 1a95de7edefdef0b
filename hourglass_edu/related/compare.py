"""Train the related designs side by side and measure their cost (notebook 10 and
``benchmarks/bench_related.py``).

    models = build_comparison_models(data.tokenizer.vocab_size, d_model=128, n_layers=4)
    results = train_comparison(models, data, TrainConfig(steps=None, minutes=1.0, ...))
    rows = measure_cost(build_comparison_models(vocab, max_length=2048), [256, 512, 1024, 2048])
    rows = measure_scaling(models, [512, 1024, 2048])   # attention scores computed, forward time

Every model is trained by the library's trainer with the same settings and budget, and evaluated
by the same ``evaluate_bpc`` (cross-entropy only, in bits per character).

Memory is reported as the activations kept for the backward pass ("saved MB": every tensor
autograd saves, parameters excluded, each storage counted once). It is measured the same way on any
device and is what grows with the sequence length; on CUDA the peak allocated memory is reported
as well.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hourglass_edu.analysis import saved_activation_bytes
from hourglass_edu.devices import resolve_device
from hourglass_edu.lm import model_device
from hourglass_edu.registry import model_classes
from hourglass_edu.training import evaluate_bpc, train
from hourglass_edu.training.precision import autocast_context, resolve_precision

__all__ = [
    "build_comparison_models",
    "comparison_variants",
    "count_score_entries",
    "markdown_table",
    "measure_cost",
    "measure_scaling",
    "train_comparison",
]

def comparison_variants() -> dict[str, type]:
    """Every comparison variant's name -> its model class, read from the model registry (each
    class lists its `comparison_variants`), in the registry's order."""
    return {variant: cls for cls in model_classes().values()
            for variant in cls.comparison_variants}


MODEL_NAMES = tuple(comparison_variants())


def build_comparison_models(
    vocab_size: int,
    *,
    d_model: int = 128,
    n_heads: int = 4,
    n_layers: int = 4,
    max_length: int = 256,
    window: int = 32,
    names: Sequence[str] = MODEL_NAMES,
    seed: int = 0,
) -> dict[str, nn.Module]:
    """One untrained model per name, all of width ``d_model``, sized to cost about the same.

    Each model class says how it is sized (its `comparison_config`): the transformer is
    ``n_layers`` full-attention blocks, the hourglass gets more (cheap) shortened layers, the
    related designs use ``window`` for their exact range.
    """
    variants = comparison_variants()
    unknown = sorted(set(names) - set(variants))
    if unknown:
        raise ValueError(f"unknown model names {unknown}: choose from {list(variants)}")
    if n_layers < 2:
        raise ValueError(
            f"n_layers must be >= 2 (the hourglass needs an outer pair), got {n_layers}"
        )
    common = dict(vocab_size=vocab_size, d_model=d_model, n_heads=n_heads, max_length=max_length)
    models = {}
    for name in names:
        cls = variants[name]
        config = cls.comparison_config(name, common=common, n_layers=n_layers, window=window)
        torch.manual_seed(seed)
        models[name] = cls(config)
    return models


def train_comparison(
    models: dict[str, nn.Module], data, config, *, eval_batches: int = 20, eval_seed: int = 1234
) -> dict[str, dict]:
    """Train each model (in place) with ``hourglass_edu.training.train(model, data, config)``.

    Returns ``{name: {"history": History, "parameters": int, "steps": int, "train_seconds":
    float, "val_bpc": float}}``; ``val_bpc`` is measured after training on the same
    ``eval_batches`` random validation windows (seeded) for every model.

    Before its clock starts, each model runs one thrown-away forward and backward pass at the
    race's batch shape (`warm_up`), as `measure_cost` does before timing: a time budget then
    pays for training steps, not for first-call costs (allocation, kernel choice).
    """
    results = {}
    for name, model in models.items():
        warm_up(model, config)
        history = train(model, data, config)
        last = history.records[-1] if history.records else {}
        results[name] = {
            "history": history,
            "parameters": model.num_parameters(),
            "steps": last.get("step", 0),
            "train_seconds": last.get("elapsed", 0.0),
            "val_bpc": evaluate_bpc(
                model,
                data.val_ids,
                batch_size=config.batch_size,
                block_size=config.block_size,
                max_batches=eval_batches,
                seed=eval_seed,
                precision=config.precision,
            ),
        }
    return results


def warm_up(model: nn.Module, config) -> None:
    """One forward and backward pass of a ``(batch_size, block_size)`` batch on the run's device
    and precision, then the gradients cleared: no update, and in eval mode (no dropout) so that
    no random number is drawn; the training that follows is the one it would have been."""
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    was_training = model.training
    model.to(device).eval()
    tokens = torch.zeros(config.batch_size, config.block_size, dtype=torch.long, device=device)
    with torch.enable_grad(), autocast_context(precision, device):
        logits = model(tokens)
    logits.float().logsumexp(-1).mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    model.zero_grad(set_to_none=True)
    model.train(was_training)


def measure_cost(
    models: dict[str, nn.Module],
    lengths: Iterable[int],
    *,
    batch_size: int = 1,
    repeats: int = 2,
    precision: str = "auto",
    device: str = "auto",
    seed: int = 0,
) -> list[dict]:
    """Time and memory of one training step (forward + backward) per model and length.

    Returns rows ``{"model", "length", "ms_per_step", "saved_mb", "peak_mb" (CUDA only, else
    None)}``; the time is the best of ``repeats`` after one warm-up step.
    """
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for name, model in models.items():
        model.to(device).train()
        for length in lengths:
            vocab = model.config.vocab_size
            tokens = torch.randint(0, vocab, (batch_size, length), generator=generator).to(device)
            saved = saved_activation_bytes(model, tokens, autocast_context(precision, device))
            timings = []
            peak = None
            for attempt in range(repeats + 1):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
                with autocast_context(precision, device):
                    logits = model(tokens)
                logits.float().logsumexp(-1).mean().backward()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    peak = torch.cuda.max_memory_allocated(device) / 2**20
                if attempt > 0:  # the first step warms up allocators and kernels
                    timings.append(time.perf_counter() - start)
                model.zero_grad(set_to_none=True)
            rows.append(
                {
                    "model": name,
                    "length": length,
                    "ms_per_step": 1000 * min(timings),
                    "saved_mb": saved / 2**20,
                    "peak_mb": peak,
                }
            )
    return rows


def markdown_table(rows: list[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows as a markdown table; ``columns`` = ``(key, header, format)`` e.g. ``("val_bpc",
    "val bpc", "{:.3f}")``. Missing values print as ``-``."""
    lines = [
        "| " + " | ".join(header for _, header, _ in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        cells = [
            fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class _ScoreCounter(TorchDispatchMode):
    """Counts attention scores as PyTorch computes them: every entry that enters a softmax, and
    (queries x keys) for every fused attention kernel, which never shows its softmax."""

    def __init__(self):
        super().__init__()
        self.entries = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__
        # _safe_softmax: the math path of scaled_dot_product_attention (no fused kernel fits)
        if name.startswith(("_softmax", "_log_softmax", "_safe_softmax")):
            self.entries += args[0].numel()
        elif "scaled_dot_product" in name:
            query, key = args[0], args[1]
            self.entries += query.numel() // query.shape[-1] * key.shape[-2]
        return func(*args, **(kwargs or {}))


def count_score_entries(model: nn.Module, tokens: torch.Tensor) -> int:
    """Attention scores one forward pass computes, summed over layers, heads and the batch
    (counted at PyTorch's dispatcher, so whatever the model does is what is counted; a final
    softmax over the vocabulary is not part of the model's forward)."""
    with torch.no_grad(), _ScoreCounter() as counter:
        model(tokens)
    return counter.entries


def measure_scaling(
    models: dict[str, nn.Module], lengths: Iterable[int], *, repeats: int = 2, seed: int = 0
) -> list[dict]:
    """Score entries and forward time (batch 1, no gradients, best of ``repeats`` after a warm-up)
    per model and length, on the models' device. Rows ``{"model", "length", "score_entries",
    "forward_ms"}``."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for name, model in models.items():
        model.eval()
        device = model_device(model)
        for length in lengths:
            tokens = torch.randint(0, model.config.vocab_size, (1, length), generator=generator)
            tokens = tokens.to(device)
            entries = count_score_entries(model, tokens)
            timings = []
            with torch.no_grad():
                for attempt in range(repeats + 1):
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    start = time.perf_counter()
                    model(tokens)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    if attempt > 0:
                        timings.append(time.perf_counter() - start)
            rows.append({"model": name, "length": length, "score_entries": entries,
                         "forward_ms": 1000 * min(timings)})
    return rows
