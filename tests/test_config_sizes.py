"""Configs, sizes and model files, checked before anything is allocated (issue 32): one size bound
on every path that builds a model, padding counted in it, the vocabulary bounded before the
embedding exists, a weights file's header read before the file is hashed, and every config value
refused in one line naming its file and field. The command line runs in this process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny import tiny_hourglass
from torch import nn

import hourglass_edu.loading as loading
import hourglass_edu.model_folders as model_folders
from hourglass_edu import HourglassConfig, HourglassLM
from hourglass_edu.cli import main
from hourglass_edu.data import CharTokenizer, prepare_data
from hourglass_edu.data.tokenizer import MAX_VOCABULARY
from hourglass_edu.loading import activation_bytes
from hourglass_edu.model_folders import export_model_folder, load_model_folder
from hourglass_edu.registry import build_model_from_config, model_shapes
from hourglass_edu.related import LongShortConfig, LongShortLM
from hourglass_edu.training import TrainConfig, build_model

TOKENIZER = CharTokenizer("abcdefgh \n")


def run(capsys, *argv) -> tuple[int, str]:
    """Exit code and stderr of the command line, which must print no traceback."""
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


def one_line(err: str, *words: str) -> None:
    assert err.count("\n") == 1, err
    for word in words:
        assert word in err, err


@pytest.fixture
def nothing_may_be_built(monkeypatch):
    """Fail the test if a weight is created off the meta device, or a weights file read or
    hashed, before the refusal."""
    real_embedding_init = nn.Embedding.__init__

    def meta_only(self, *args, **kwargs):
        if torch.get_default_device().type != "meta":
            raise AssertionError("a model was built for real before the size checks")
        real_embedding_init(self, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("a weights file was read or hashed before the checks")

    monkeypatch.setattr(nn.Embedding, "__init__", meta_only)
    monkeypatch.setattr(model_folders, "_read_weights", refuse)
    monkeypatch.setattr(model_folders, "sha256_of", refuse)


def tiny_folder(folder: Path) -> Path:
    model = tiny_hourglass(TOKENIZER.vocab_size, d_model=16, max_length=32)
    return export_model_folder(model, TOKENIZER, folder)


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A tiny model folder (name it before `nothing_may_be_built`: it builds a model)."""
    return tiny_folder(tmp_path / "m")


# --- case 1: padding to a shortening factor ---------------------------------------------------


def test_a_shortening_factor_beyond_max_length_is_refused_before_any_padding(
        shipped_copy, capsys, nothing_may_be_built, rewrite_config):
    rewrite_config(shipped_copy, structure="1@1 1@1048576 1@1")  # 4.5 GB in `evaluate` before
    code, err = run(capsys, "evaluate", "--ckpt", shipped_copy, "--max-tokens", "100")
    assert code == 2
    one_line(err, str(shipped_copy), "1,048,576", "max_length=256")
    with pytest.raises(ValueError, match="more than max_length=64"):
        HourglassConfig(vocab_size=10, d_model=16, n_heads=2, structure="1@1 1@128 1@1",
                        max_length=64)
    HourglassConfig(vocab_size=10, d_model=16, n_heads=2, structure="1@1 1@64 1@1",
                    max_length=64)  # a factor of max_length itself pads nothing


def test_the_activation_bound_counts_each_levels_padding(monkeypatch):
    config = HourglassConfig(vocab_size=10, d_model=16, n_heads=2,
                             structure="1@1 1@2 1@32 1@2 1@1", max_length=33)
    with torch.device("meta"):
        model = HourglassLM(config)
    # level 0 pads 33 to 34; level 1 runs on 17 positions, padded to 32 (factor 16)
    assert model.longest_sequence(33) == 34
    # 2 tokens: level 1 holds one position, padded to 16
    assert model.longest_sequence(2) == 16 and model.longest_sequence(32) == 32
    outputs = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    assert activation_bytes(model) == 4 * outputs * 34
    # a limit that holds the unpadded window but not the padded one refuses the model
    monkeypatch.setattr(loading, "MAX_ACTIVATION_BYTES", 4 * outputs * 33)
    with pytest.raises(ValueError, match="GiB of activations"):
        model_shapes("HourglassLM", config.to_dict(), "here")


# --- case 2: one size bound on every path that builds a model ---------------------------------


HUGE = dict(vocab_size=100, d_model=8192, n_heads=8, max_length=64)  # 1.6G parameters


@pytest.mark.parametrize("path", ["build_model_from_config", "class", "preset", "related"])
def test_every_path_that_builds_a_model_sizes_it_before_any_weight(path, nothing_may_be_built):
    builds = {
        "build_model_from_config": lambda: build_model_from_config(
            "HourglassLM", {**HUGE, "structure": "2@1"}),
        "class": lambda: HourglassLM(HourglassConfig(**HUGE, structure="2@1")),
        "preset": lambda: build_model("smoke", 100, d_model=8192, n_heads=8, structure="2@1"),
        "related": lambda: LongShortLM(LongShortConfig(**HUGE, n_layers=2)),
    }
    with pytest.raises(ValueError, match="parameters, beyond this library's limit"):
        builds[path]()


def test_a_model_within_the_bound_is_built_as_before():
    torch.manual_seed(0)
    model = HourglassLM(HourglassConfig(vocab_size=10, d_model=16, n_heads=2,
                                        structure="1@1 1@2 1@1", max_length=32))
    torch.manual_seed(0)
    with torch.device("meta"):
        HourglassLM(model.config)  # the meta build draws no random numbers
    again = HourglassLM(model.config)
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                   again.state_dict().values(), strict=True))


# --- case 3: the vocabulary ----------------------------------------------------------------------


def every_character(count: int) -> str:
    """`count` different printable characters, none of them a space or a line break."""
    printable = (chr(c) for c in range(0x21, 0x30000) if chr(c).isprintable())
    return "".join(next(printable) for _ in range(count))


def test_a_corpus_of_too_many_characters_is_refused_before_the_vocabulary_is_built(
        tmp_path, capsys, nothing_may_be_built):
    corpus = tmp_path / "everything.txt"
    characters = every_character(MAX_VOCABULARY + 20_000)  # ~5% of the poems go to validation
    poems = [characters[start:start + 1000] for start in range(0, len(characters), 1000)]
    corpus.write_text("\n\n".join(poems), encoding="utf-8")  # 86 poems, 340 KB
    with pytest.raises(ValueError, match=r"everything.txt: the text holds 6[0-9,]+ different"):
        prepare_data(corpus)
    code, err = run(capsys, "train", "--corpus", corpus, "--out", tmp_path / "run",
                    "--preset", "smoke")
    assert code == 2
    one_line(err, "everything.txt", "unk=True")


def test_a_tokenizer_of_more_characters_than_the_limit_is_refused():
    with pytest.raises(ValueError, match="list of characters holds 65,536"):
        CharTokenizer.from_dict({**TOKENIZER.to_dict(),
                                 "chars": list(every_character(MAX_VOCABULARY))[:MAX_VOCABULARY]})
    fits = CharTokenizer(every_character(MAX_VOCABULARY)[:MAX_VOCABULARY - 2], unk=True)
    assert fits.vocab_size == MAX_VOCABULARY


# --- case 4: a huge weights file -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zeros", "real header, 20 GB long"])
def test_a_20_gb_sparse_weights_file_is_refused_from_its_header_unhashed(
        tiny, kind, nothing_may_be_built):
    folder = tiny
    weights = folder / "model.safetensors"
    if kind == "zeros":
        weights.unlink()
    with open(weights, "ab") as handle:  # sparse: no disk used
        handle.truncate(20 << 30)
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors"):
        load_model_folder(folder)


def test_weights_of_another_size_than_the_config_are_refused_unhashed(
        tiny, nothing_may_be_built, rewrite_config):
    folder = tiny
    rewrite_config(folder, d_model=32)
    with pytest.raises(ValueError, match="the config needs"):
        load_model_folder(folder)


# --- case 5: values no config may hold -----------------------------------------------------------


def test_a_non_finite_rotary_base_is_refused_naming_the_field(shipped_copy, capsys):
    text = (shipped_copy / "config.json").read_text().replace('"rotary_base": 10000.0',
                                                              '"rotary_base": Infinity')
    (shipped_copy / "config.json").write_text(text)
    code, err = run(capsys, "sample", "--ckpt", shipped_copy, "--max-new-tokens", "3")
    assert code == 2
    one_line(err, str(shipped_copy), "rotary_base must be a finite number")
    for base in (math.inf, math.nan, True, "1e4"):
        with pytest.raises(ValueError, match="rotary_base"):
            HourglassConfig(vocab_size=10, d_model=16, n_heads=2, rotary_base=base)


@pytest.mark.parametrize("changes", [
    {"steps": True}, {"batch_size": True}, {"lr": True}, {"minutes": True}, {"seed": True},
    {"steps": 2.5}, {"lr": math.nan}, {"weight_decay": math.nan}, {"weight_decay": math.inf},
    {"minutes": 10**400}, {"seed": 2**70}, {"seed": -1}, {"progress": "no"}, {"compile": 1},
    {"precision": None}, {"eval_batches": False},
])
def test_train_config_refuses_bools_and_other_types_where_numbers_go(changes):
    name = next(iter(changes))
    with pytest.raises(ValueError, match=name):
        TrainConfig(**changes)


def test_train_config_still_takes_what_it_took():
    config = TrainConfig(steps=None, minutes=2, lr=1, grad_clip=None, eval_batches=None,
                         device=torch.device("cpu"), seed=2**63 - 1)
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_a_5000_digit_number_in_config_json_names_the_file_and_field(shipped_copy, capsys):
    text = (shipped_copy / "config.json").read_text().replace('"d_model": 128',
                                                              '"d_model": 1' + "0" * 5000)
    (shipped_copy / "config.json").write_text(text)
    code, err = run(capsys, "sample", "--ckpt", shipped_copy)
    assert code == 2
    one_line(err, "config.json", "'d_model'", "5,001 digits")


def test_a_deeply_nested_config_json_names_the_file(shipped_copy, capsys):
    text = (shipped_copy / "config.json").read_text().replace(
        '"d_model": 128', '"d_model": ' + "[" * 100_000 + "]" * 100_000)
    (shipped_copy / "config.json").write_text(text)
    code, err = run(capsys, "sample", "--ckpt", shipped_copy)
    assert code == 2
    one_line(err, "config.json", "nested too deeply")


def test_a_huge_number_in_a_checkpoints_config_is_described_not_printed():
    with pytest.raises(ValueError, match="d_model=a number of about 5,000 digits"):
        model_shapes("HourglassLM", {"vocab_size": 10, "d_model": 10**5000}, "ckpt.pt")


# --- the audit: more hostile configs -------------------------------------------------------------


def test_a_huge_width_whose_heads_do_not_divide_it_is_refused_at_once():
    # the head rule listed divisors by counting up to d_model: 10**12 steps
    with pytest.raises(ValueError, match="d_model=1,000,000,000,001 is beyond"):
        HourglassConfig(vocab_size=10, d_model=10**12 + 1, n_heads=2)


@pytest.mark.parametrize("field", ["tie_embeddings", "unsafe_disable_shift"])
def test_a_switch_in_config_json_must_be_true_or_false(shipped_copy, capsys, field, rewrite_config):
    rewrite_config(shipped_copy, **{field: "false"})  # a non-empty string is true in Python
    code, err = run(capsys, "sample", "--ckpt", shipped_copy)
    assert code == 2
    one_line(err, f"{field} must be True or False, got 'false'")


def test_a_key_twice_in_config_json_is_refused(shipped_copy, capsys):
    text = (shipped_copy / "config.json").read_text().replace('"d_model": 128',
                                                              '"d_model": 128, "d_model": 64')
    (shipped_copy / "config.json").write_text(text)
    code, err = run(capsys, "sample", "--ckpt", shipped_copy)
    assert code == 2
    one_line(err, "config.json", "key 'd_model' appears twice")


def make_huge_and_unreadable(path: Path, monkeypatch) -> None:
    """Make `path` a 20 GB sparse file (no disk used) that the test fails if anything reads:
    without the size check it would be read whole into memory."""
    with open(path, "ab") as handle:
        handle.truncate(20 << 30)
    read_text = Path.read_text

    def never_this_one(self, *args, **kwargs):
        if self.name == path.name:
            pytest.fail(f"the 20 GB {path.name} was read")
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", never_this_one)


def test_a_20_gb_sparse_config_json_is_refused_unread(shipped_copy, capsys, monkeypatch):
    make_huge_and_unreadable(shipped_copy / "config.json", monkeypatch)
    code, err = run(capsys, "sample", "--ckpt", shipped_copy)
    assert code == 2
    one_line(err, "config.json is 21,474,836,480 bytes")


def test_a_card_line_with_a_5000_digit_number_names_the_card(shipped_copy, capsys):
    card = shipped_copy / "README.md"
    card.write_text(card.read_text().replace("---\n", "---\nsteps: 1" + "0" * 5000 + "\n", 1))
    code, err = run(capsys, "sample", "--ckpt", shipped_copy)
    assert code == 2
    one_line(err, "README.md", "'steps'", "digits")


def test_a_structure_number_of_thousands_of_digits_is_refused_by_name():
    with pytest.raises(ValueError, match="more than 9 digits"):
        HourglassConfig(vocab_size=10, structure="1@1 1" + "0" * 5000 + "@2 1@1")


def test_a_bool_where_a_size_or_rate_goes_is_refused():
    with pytest.raises(ValueError, match="dropout"):
        HourglassConfig(vocab_size=10, d_model=16, n_heads=2, dropout=False)
    with pytest.raises(ValueError, match="max_length must be a positive integer, got True"):
        HourglassConfig(vocab_size=10, d_model=16, n_heads=2, max_length=True)
    with pytest.raises(ValueError, match="dual_norm must be True or False"):
        LongShortConfig(vocab_size=10, d_model=16, n_heads=2, dual_norm="yes")


def test_a_20_gb_sparse_model_card_is_refused_unread(tmp_path, monkeypatch):
    folder = tiny_folder(tmp_path / "m")
    make_huge_and_unreadable(folder / "README.md", monkeypatch)
    with pytest.raises(ValueError, match="README.md is 21,474,836,480 bytes"):
        model_folders.read_card(folder)


def test_an_h_transformer_block_beyond_max_length_is_refused_before_padding():
    # 1 << 20 asked the allocator for a terabyte of block scores in the first forward pass
    from hourglass_edu.related import HTransformerLM
    from hourglass_edu.related.h_transformer import HTransformerConfig

    with pytest.raises(ValueError, match="block_size=1,048,576 is more than max_length=64"):
        HTransformerConfig(vocab_size=10, d_model=16, n_heads=2, max_length=64,
                           block_size=1 << 20)
    with torch.device("meta"):
        model = HTransformerLM(HTransformerConfig(vocab_size=10, d_model=16, n_heads=2,
                                                  max_length=40, block_size=16))
    assert model.longest_sequence(40) == 64 and model.longest_sequence(16) == 16


def test_finetuning_on_a_corpus_of_too_many_characters_names_it_before_the_model_grows(
        tmp_path, monkeypatch):
    from hourglass_edu.training import finetuning, prepare_finetuning

    base = tiny_hourglass(TOKENIZER.vocab_size, d_model=16, max_length=32)
    monkeypatch.setattr(finetuning, "extend_vocabulary",
                        lambda *args: pytest.fail("the model grew before the refusal"))
    checkpoint = {"model_class": "HourglassLM", "model_config": base.config.to_dict(),
                  "model": base.state_dict(), "tokenizer": TOKENIZER.to_dict()}
    corpus = tmp_path / "everything.txt"
    characters = every_character(MAX_VOCABULARY + 20_000)
    corpus.write_text("\n\n".join(characters[start:start + 1000]
                                  for start in range(0, len(characters), 1000)), encoding="utf-8")
    with pytest.raises(ValueError, match=r"everything.txt: the text holds"):
        prepare_finetuning(checkpoint, corpus)
