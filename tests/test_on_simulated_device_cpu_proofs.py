"""What can be proven about the GPU recipe without a GPU (issue 22, item 5).

- the gpu preset at its full batch runs forward and backward on the `meta` device (shapes and
  placement only, no values): every gradient lands where its weight is, and the activations
  autograd keeps, counted in fp16, stay under 12 GiB (a T4 has 15);
- bf16 and fp16 autocast on the CPU: the forward pass computes in the low precision, the loss
  and gradients come back finite, fp32 and close to fp32's;
- `torch.compile` (dynamo) sees the model as one graph, with no graph breaks.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_hourglass

from hourglass_edu import HourglassLM
from hourglass_edu.training import build_model, get_preset

VOCAB = 200  # more than either corpus's tokenizer, so the head is not underestimated
T4_BUDGET_GIB = 12


def saved_bytes_on_meta(model: torch.nn.Module, tokens: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Bytes of what autograd saves for backward (each storage once, found through its base:
    meta tensors have no data pointers to tell storages apart), and the training loss."""
    saved = {}

    def pack(tensor):
        base = tensor if tensor._base is None else tensor._base
        saved[id(base)] = (base, base.untyped_storage().nbytes())  # keep base alive: ids unique
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(tokens)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
    return sum(size for _, size in saved.values()), loss


@pytest.mark.slow
def test_gpu_preset_at_full_batch_fits_a_t4_in_fp16_on_meta():
    preset = get_preset("gpu")
    batch, length = preset.train.batch_size, preset.train.block_size
    with torch.device("meta"):
        model = build_model(preset, vocab_size=VOCAB).to(torch.float16)
    tokens = torch.randint(0, VOCAB, (batch, length), device="meta")
    saved, loss = saved_bytes_on_meta(model, tokens)
    loss.backward()
    assert loss.device.type == "meta"
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.device == parameter.device, name
        assert parameter.grad.shape == parameter.shape, name
    # Attention on meta takes the math path (it keeps batch x heads x length^2 probabilities);
    # a GPU's fused kernels keep less, so this count is an upper estimate.
    gib = saved / 2**30
    assert gib < T4_BUDGET_GIB, f"{gib:.1f} GiB of activations at batch {batch} x {length}"


def tiny_model(seed=0, **changes) -> HourglassLM:
    return tiny_hourglass(20, seed=seed, **{"max_length": 32, **changes})


def loss_and_gradients(model, tokens, dtype=None):
    model.zero_grad(set_to_none=True)
    context = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    with context:
        logits = model(tokens)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())
    loss.backward()
    return logits.dtype, loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cpu_autocast_forward_and_backward_in_low_precision(dtype):
    model = tiny_model()
    tokens = torch.randint(0, 20, (2, 32), generator=torch.Generator().manual_seed(0))
    _, reference_loss, reference = loss_and_gradients(model, tokens)
    logits_dtype, loss, gradients = loss_and_gradients(model, tokens, dtype)
    assert logits_dtype == dtype, "the head's matmul did not run in the low precision"
    assert loss == pytest.approx(reference_loss, rel=2e-2)
    for name, gradient in gradients.items():
        assert gradient.dtype == torch.float32 and torch.isfinite(gradient).all(), name
        scale = reference[name].abs().max().clamp_min(1e-6)
        assert (gradient - reference[name]).abs().max() <= 0.1 * scale, name


@pytest.mark.slow
def test_torch_compile_sees_one_graph_without_breaks():
    model = tiny_model().eval()
    tokens = torch.randint(0, 20, (1, 24), generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(tokens)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
