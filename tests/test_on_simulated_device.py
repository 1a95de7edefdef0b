"""The library on the simulated accelerator "sim" (tests/simulated_device): a device that is not the
CPU, so a forgotten `.to(device)` or `.cpu()` fails here as on a GPU.

First the device itself is held to what it promises (mixing raises, NumPy refuses it, copies
copy); then every part of the library a learner drives runs on it: training, both decoders (and
their equality), `run_with_cache`, analysis, every figure and every widget. Numerics on sim are
the CPU's, so results are also compared with the same computation on the CPU.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import simulated_device  # noqa: E402
import torch  # noqa: E402
from tiny import tiny_hourglass, toy_data  # noqa: E402

from hourglass_edu import HourglassLM, viz, widgets  # noqa: E402
from hourglass_edu.analysis import (  # noqa: E402
    dependency_matrix,
    inspect_text,
    principal_components,
    saved_activation_bytes,
)
from hourglass_edu.generation import generate  # noqa: E402
from hourglass_edu.model_folders import export_model_folder, load_model_folder  # noqa: E402
from hourglass_edu.related import (
    HTransformerLM,
    LongShortConfig,
    LongShortLM,
    SimpleHierarchicalConfig,
    SimpleHierarchicalLM,
)
from hourglass_edu.related.compare import count_score_entries  # noqa: E402
from hourglass_edu.related.h_transformer import HTransformerConfig
from hourglass_edu.related.maps import long_short_map, sliding_window_map  # noqa: E402
from hourglass_edu.training import (  # noqa: E402
    TrainConfig,
    evaluate_bpc,
    load_model,
    train,
)

SIM = simulated_device.DEVICE  # "sim:0"; torch knows it once `install()` has run


@pytest.fixture(autouse=True, scope="module")
def sim_device():
    """Register "sim" when these tests run, not when pytest collects the file."""
    simulated_device.install()
@pytest.fixture(scope="module")
def data():
    """80 one-line toy documents of 3-8 words."""
    return toy_data(count=80, lines=1, words_per_line=(3, 8))


def tiny_by_three(vocab_size: int, seed: int = 0) -> HourglassLM:
    """The shared tiny model, shortened by 3 (a factor that does not divide the test lengths)."""
    return tiny_hourglass(vocab_size, seed=seed, structure="1@1 1@3 1@1")


def on_sim(module: torch.nn.Module) -> bool:
    tensors = [*module.parameters(), *module.buffers()]
    return all(t.device.type == "sim" for t in tensors)


# ------------------------------------------------------------------------------------------
# The device keeps its promises


def test_a_forgotten_to_device_raises_as_on_a_gpu():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 10))
    tokens = torch.randint(0, 10, (2, 5))
    with pytest.raises(RuntimeError, match="same device"):
        model(tokens.to(SIM))  # the model stayed on the CPU
    model.to(SIM)
    with pytest.raises(RuntimeError, match="same device"):
        model(tokens)  # the input stayed on the CPU
    assert model(tokens.to(SIM)).device.type == "sim"
    with pytest.raises(RuntimeError, match="same device"):
        torch.ones(3, device=SIM) + torch.ones(3)
    # A 0-dim CPU tensor mixes with device tensors, as on CUDA.
    assert (torch.ones(3, device=SIM) * torch.tensor(2.0)).device.type == "sim"


def test_a_forgotten_cpu_before_numpy_or_matplotlib_raises():
    values = torch.arange(6.0, device=SIM).reshape(2, 3)
    with pytest.raises(TypeError, match="cpu"):
        values.numpy()
    with pytest.raises(TypeError, match="cpu"):
        np.asarray(values)
    figure, ax = plt.subplots()
    with pytest.raises(TypeError, match="cpu"):
        ax.imshow(values)
    plt.close(figure)
    np.testing.assert_array_equal(values.cpu().numpy(), np.arange(6.0).reshape(2, 3))
    assert values.sum().item() == 15.0 and values.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_moving_copies_and_factories_make_sim_tensors():
    host = torch.zeros(3)
    device = host.to(SIM)
    device.add_(1.0)
    assert host.tolist() == [0, 0, 0] and device.tolist() == [1, 1, 1]
    back = device.cpu()
    assert type(back) is torch.Tensor and back.device.type == "cpu"
    back.add_(1.0)
    assert device.tolist() == [1, 1, 1]
    made = [torch.zeros(2, device=SIM), torch.arange(4, device=SIM),
            torch.tensor([1, 2], device=SIM), torch.randn(2, 2, device=SIM),
            torch.full((2,), 3.0, device="sim"), torch.linspace(0, 1, 5, device=SIM)]
    assert all(t.device.type == "sim" for t in made)
    assert made[1].tolist() == [0, 1, 2, 3] and made[5].tolist() == [0, 0.25, 0.5, 0.75, 1]
    with torch.device(SIM):
        assert torch.nn.Linear(2, 2).weight.device.type == "sim"


def test_a_cpu_generator_on_a_sim_op_raises_as_on_cuda():
    with pytest.raises(RuntimeError, match="generator"):
        torch.randint(0, 5, (3,), generator=torch.Generator().manual_seed(0), device=SIM)


def test_adamw_foreach_and_fused_train_on_sim_like_on_the_cpu():
    results = []
    for device, fused in (("cpu", False), (SIM, False), (SIM, True)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 1))
        model.to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=not fused,
                                      fused=fused or None)
        inputs = torch.linspace(-1, 1, 12).reshape(3, 4).to(device)
        for _ in range(3):
            optimizer.zero_grad()
            model(inputs).pow(2).mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        assert on_sim(model) == (device == SIM)
        results.append([p.detach().cpu() for p in model.parameters()])
    for cpu_weights, sim_weights in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(cpu_weights, sim_weights)
    for cpu_weights, fused_weights in zip(results[0], results[2], strict=True):
        torch.testing.assert_close(cpu_weights, fused_weights, rtol=1e-5, atol=1e-6)


def test_a_state_dict_saves_through_the_cpu_and_loads_back_onto_sim():
    model = tiny_by_three(12).to(SIM)
    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buffer)
    buffer.seek(0)
    restored = tiny_by_three(12, seed=1).to(SIM)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert on_sim(restored)
    for name, value in model.state_dict().items():
        assert torch.equal(value.cpu(), restored.state_dict()[name].cpu()), name


# ------------------------------------------------------------------------------------------
# The library on sim


@pytest.mark.slow
def test_training_on_sim_matches_the_cpu_and_its_checkpoint_loads(data, tmp_path):
    settings = dict(steps=4, batch_size=4, block_size=32, lr=3e-3, warmup_steps=1, eval_every=2,
                    eval_batches=2, log_every=1, precision="fp32", progress=False)
    histories, models = [], []
    for device in ("cpu", "sim"):
        model = tiny_by_three(data.tokenizer.vocab_size)
        histories.append(train(model, data, TrainConfig(**settings, device=device)))
        models.append(model)
    assert on_sim(models[1])
    assert histories[0].column("train_loss") == pytest.approx(histories[1].column("train_loss"),
                                                              rel=1e-5)
    bpc = evaluate_bpc(models[1], data.val_ids, batch_size=4, block_size=32, max_batches=2)
    assert bpc == pytest.approx(evaluate_bpc(models[0], data.val_ids, batch_size=4,
                                             block_size=32, max_batches=2), rel=1e-5)


def test_a_checkpoint_and_a_model_folder_written_from_sim_load_back_onto_sim(data, tmp_path):
    model = tiny_by_three(data.tokenizer.vocab_size)
    train(model, data, TrainConfig(steps=1, batch_size=2, block_size=16, eval_every=1,
                                   eval_batches=1, precision="fp32", progress=False,
                                   device="sim"), checkpoint_path=tmp_path / "run.pt")
    assert on_sim(model)
    loaded, _tokenizer = load_model(tmp_path / "run.pt", device="sim")
    assert on_sim(loaded)
    folder = export_model_folder(model, data.tokenizer, tmp_path / "folder")
    from_folder, _tokenizer = load_model_folder(folder, device="sim")
    assert on_sim(from_folder)
    tokens = torch.tensor([data.tokenizer.encode("the old pond")], device=SIM)
    torch.testing.assert_close(from_folder(tokens).cpu(), model.eval()(tokens).cpu())


def related_models(vocab_size: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    tiny = dict(vocab_size=vocab_size, d_model=32, n_heads=2, n_layers=2, max_length=64)
    return {
        "hourglass": tiny_by_three(vocab_size),
        "long_short": LongShortLM(LongShortConfig(**tiny, window=5, segment_size=4, rank=2)),
        "h_transformer": HTransformerLM(HTransformerConfig(**tiny, block_size=4)),
        "simple_hierarchical": SimpleHierarchicalLM(SimpleHierarchicalConfig(
            **tiny, compressions=(1, 2, 4), windows=(4, None, 3))),
    }


@pytest.mark.parametrize("name", ["hourglass", "long_short", "h_transformer",
                                  "simple_hierarchical"])
def test_cached_and_recomputing_generation_agree_on_sim_and_with_the_cpu(data, name):
    model = related_models(data.tokenizer.vocab_size)[name].eval()
    tokens = torch.tensor([data.tokenizer.encode("the old pond a frog")])
    cpu_logits = model(tokens)
    texts = {}
    for device in ("cpu", "sim"):
        model.to(device)
        for use_cache in (True, False):
            texts[device, use_cache] = generate(model, data.tokenizer, "the old", 24, seed=3,
                                                temperature=0.8, use_cache=use_cache)
    assert on_sim(model)
    assert len(set(texts.values())) == 1, texts
    sim_logits = model(tokens.to(SIM))
    assert sim_logits.device.type == "sim"
    torch.testing.assert_close(sim_logits.cpu(), cpu_logits)


def test_attention_scores_are_counted_on_sim_as_on_the_cpu(data):
    """The race of notebook 10 counts score entries at the dispatcher; on a device where no fused
    kernel fits, attention takes the math path (_safe_softmax), which must count too."""
    for name, model in related_models(data.tokenizer.vocab_size).items():
        tokens = torch.randint(0, data.tokenizer.vocab_size, (1, 32))
        on_cpu = count_score_entries(model.eval(), tokens)
        assert on_cpu > 0 and count_score_entries(model.to(SIM), tokens.to(SIM)) == on_cpu, name


def test_run_with_cache_and_analysis_on_sim(data):
    model = tiny_by_three(data.tokenizer.vocab_size).to(SIM).eval()
    tokens = torch.tensor(data.tokenizer.encode("the old pond a frog"), device=SIM)
    logits, cache = model.run_with_cache(tokens[None])
    assert logits.device.type == "sim"
    assert all(value.device.type == "sim" for value in cache.values())
    look = inspect_text(model, data.tokenizer, "the old pond a frog")
    assert look.text == "the old pond a frog"
    for method in ("perturbation", "gradient"):
        matrix = dependency_matrix(model, tokens, method=method)
        assert torch.triu(matrix.cpu(), diagonal=1).abs().max() <= 1e-6 * matrix.abs().max().cpu()
    points = torch.randn(20, 5, device=SIM)
    components, explained = principal_components(points)
    assert components.shape[-1] == 2 and explained.numel() == 2
    assert saved_activation_bytes(model, tokens[None]) > 0


@pytest.mark.slow
def test_every_figure_draws_from_sim_results(data):
    model = tiny_by_three(data.tokenizer.vocab_size).to(SIM).eval()
    look = inspect_text(model, data.tokenizer, "the old pond a frog")
    tokens = torch.tensor(data.tokenizer.encode("the old pond"), device=SIM)
    matrix = dependency_matrix(model, tokens)
    history = train(model, data, TrainConfig(steps=2, batch_size=2, block_size=16, eval_every=1,
                                             eval_batches=1, log_every=1, precision="fp32",
                                             progress=False, device="sim"))
    figures = [
        viz.pooling_diagram("the old pond", 3),
        viz.plot_dependency({"hourglass": matrix}, list("the old pond")),
        viz.plot_attention(look), viz.plot_activation_norms(look),
        viz.plot_level_activations(look, level=1), viz.plot_pca(look),
        viz.plot_residual_similarity(look),
        viz.plot_resolution_maps({"window": sliding_window_map(16, 4).to(SIM),
                                  "long-short": long_short_map(16, 4, 4, 2).to(SIM)}),
        viz.plot_history(history), viz.plot_training_curves({"sim": history}),
    ]
    for figure in figures:
        assert viz.figure_to_png(figure).startswith(b"\x89PNG")


@pytest.mark.slow
def test_every_widget_works_on_sim(data):
    model = tiny_by_three(data.tokenizer.vocab_size).to(SIM)
    demo = widgets.generation_demo(model, data.tokenizer, prompt="the old")
    demo.length.value = 8
    demo.seed.value = 1
    demo.generate_button.click()
    assert demo.wait(timeout=60)
    assert demo.status.value.startswith("done"), demo.status.value
    expected = generate(model.cpu(), data.tokenizer, "the old", 8, settings=demo.settings())
    assert demo.output.value == "the old" + expected
    model.to(SIM)
    attention = widgets.attention_explorer(model, data.tokenizer, "the old pond")
    first = attention.image.value
    attention.head.value = 1
    attention.level.value = 1
    attention.text.value = "a frog jumps"
    assert attention.status.value == "" and attention.image.value != first
    activations = widgets.activation_explorer(model, data.tokenizer, "the old pond")
    first = activations.image.value
    activations.level.value = 1
    activations.text.value = "a frog jumps"
    assert activations.status.value == "" and activations.image.value != first
