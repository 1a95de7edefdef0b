"""Which inputs each output depends on: `dependency_matrix`, measured by perturbing one input
token at a time (exact for any model) or by gradients (one backward pass).

A causal model gives a lower-triangular matrix; the notebooks use it to show the leak that the
k - 1 shift closes (`hourglass.without_shift`). Drawn by `viz.plot_dependency`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from hourglass_edu.lm import eval_mode, model_device

__all__ = ["dependency_matrix"]


def dependency_matrix(
    model: Callable[[torch.Tensor], torch.Tensor],
    tokens: torch.Tensor | Sequence[int],
    *,
    vocab_size: int | None = None,
    method: str = "perturbation",
    samples: int = 2,
    seed: int = 0,
    batch_size: int = 64,
) -> torch.Tensor:
    """How strongly each output position depends on each input position.

    Args:
        model: any function from tokens `(batch, length)` to logits `(batch, length, vocab)`;
            for `method="gradient"` it must be an `nn.Module` holding an `nn.Embedding` for tokens.
        tokens: the input sequence, shape `(length,)`.
        vocab_size: needed by `"perturbation"` (replacement tokens are drawn from it); read from
            the logits when omitted.
        method: `"perturbation"`: replace input token s by `samples` different random tokens and
            record how much each output's logits move (max absolute change), exact for any model;
            `"gradient"`: the norm of the gradient of a random projection of output t's logits
            with respect to input s's embedding.
        seed: seeds the replacement tokens / projection, so the matrix is reproducible.

    Returns:
        `(length, length)` float tensor `D`, `D[t, s]` = dependence of output t on input s.
        A causal model has `D[t, s] == 0` for every `s > t` (a lower-triangular matrix).
    """
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() != 1 or tokens.numel() < 2:
        raise ValueError(
            f"tokens must be a 1-D sequence of at least 2 ids, got shape {tuple(tokens.shape)}"
        )
    if method not in ("perturbation", "gradient"):
        raise ValueError(f"method must be 'perturbation' or 'gradient', got {method!r}")
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    with eval_mode(model):  # dropout would make every output "depend" on noise
        tokens = tokens.to(model_device(model))
        generator = torch.Generator().manual_seed(seed)
        if method == "gradient":
            return _gradient_dependency(model, tokens, generator)
        return _perturbation_dependency(model, tokens, vocab_size, samples, generator, batch_size)


@torch.no_grad()
def _perturbation_dependency(model, tokens, vocab_size, samples, generator, batch_size):
    length = tokens.numel()
    if vocab_size is None:
        vocab_size = model(tokens[None]).shape[-1]
    if vocab_size < 2:
        raise ValueError("perturbation needs a vocabulary of at least 2 tokens")
    # Every (position, sample) pair becomes one sequence with that one token replaced; the offset in
    # 1..vocab-1 guarantees the replacement differs from the original.
    positions = torch.arange(length).repeat_interleave(samples)
    offsets = torch.randint(1, vocab_size, (positions.numel(),), generator=generator)
    batch = tokens.cpu().repeat(positions.numel(), 1)
    rows = torch.arange(positions.numel())
    batch[rows, positions] = (batch[rows, positions] + offsets) % vocab_size
    changes = []
    for chunk in batch.split(max(1, batch_size - 1)):
        # The unchanged sequence rides along as row 0 of every chunk: the same kernels then
        # compute it and its perturbed copies, so an output that truly does not depend on the
        # changed token comes out bit-identical (a separate batch-of-one run can differ in the
        # last bits, which would blur the exact zeros of the causal triangle).
        logits = model(torch.cat([tokens.cpu()[None], chunk]).to(tokens.device)).float()
        changes.append((logits[1:] - logits[:1]).abs().amax(dim=-1).cpu())  # (chunk, length)
    change = torch.cat(changes)  # (length * samples, length): [perturbed input, output]
    per_input = change.view(length, samples, length).amax(dim=1)
    return per_input.T.contiguous()  # [output, input]


def _gradient_dependency(model, tokens, generator):
    if not isinstance(model, torch.nn.Module):
        raise ValueError("method='gradient' needs an nn.Module; use method='perturbation'")
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    if not embeddings:
        raise ValueError("method='gradient' needs an nn.Embedding in the model; use 'perturbation'")
    captured = {}

    def keep_output(module, inputs, output):
        captured["embedded"] = output

    handle = embeddings[0].register_forward_hook(keep_output)
    length = tokens.numel()
    try:
        with torch.enable_grad():
            # One copy of the sequence per output position: row t backpropagates only from output
            # t, so a single backward pass gives the whole Jacobian's row norms (rows of a batch
            # never mix in a language model).
            logits = model(tokens[None].expand(length, -1)).float()  # (length, length, vocab)
            direction = torch.randn(logits.shape[-1], generator=generator).to(logits.device)
            rows = torch.arange(length, device=logits.device)
            chosen = logits[rows, rows] @ direction  # (length,): output t of copy t
            (grad,) = torch.autograd.grad(chosen.sum(), captured["embedded"])
    finally:
        handle.remove()
    return grad.float().norm(dim=-1).cpu()  # (output copy t, input s, dim) -> (t, s)
