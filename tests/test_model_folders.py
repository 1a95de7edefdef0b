"""Model folders: export and load round trip, and every way a folder can be wrong."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import tiny_hourglass

from hourglass_edu import load_model
from hourglass_edu.cli import main
from hourglass_edu.data import CharTokenizer
from hourglass_edu.model_folders import (
    export_model_folder,
    load_model_folder,
    read_card,
    read_history,
)
from hourglass_edu.pretrained import load_pretrained
from hourglass_edu.related import LongShortConfig, LongShortLM

TOKENIZER = CharTokenizer("abcdefgh \n")


def tiny(structure="1@1 1@2 1@1"):
    return tiny_hourglass(TOKENIZER.vocab_size, d_model=16, structure=structure,
                          max_length=32).eval()


def test_float32_round_trip_is_exact_and_the_card_holds_the_sha256(tmp_path):
    model = tiny()
    history = {"records": [{"step": 1, "val_bpc": 4.0}]}
    folder = export_model_folder(model, TOKENIZER, tmp_path / "m", card={"corpus": "toy"},
                                 history=history)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "history.json", "model.safetensors", "tokenizer.json"]
    assert read_history(folder) == history
    card = read_card(folder)
    assert card["corpus"] == "toy" and len(card["weights_sha256"]) == 64
    loaded, tokenizer = load_model(folder)  # load_model knows model folders too
    assert tokenizer == TOKENIZER
    tokens = torch.randint(0, TOKENIZER.vocab_size, (2, 20))
    assert torch.equal(loaded(tokens), model(tokens))


def test_half_precision_folder_is_half_the_size_and_close(tmp_path):
    model = tiny()
    full = export_model_folder(model, TOKENIZER, tmp_path / "full") / "model.safetensors"
    half = export_model_folder(model, TOKENIZER, tmp_path / "half", dtype="float16")
    assert (half / "model.safetensors").stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = load_model_folder(half)
    tokens = torch.randint(0, TOKENIZER.vocab_size, (1, 20))
    torch.testing.assert_close(loaded(tokens), model(tokens), atol=2e-3, rtol=0)


def test_any_model_class_round_trips(tmp_path):
    config = LongShortConfig(vocab_size=TOKENIZER.vocab_size, d_model=16, n_heads=2, n_layers=1,
                             max_length=32, window=4, segment_size=4, rank=1)
    model = LongShortLM(config).eval()
    loaded, _ = load_model_folder(export_model_folder(model, TOKENIZER, tmp_path / "ls"))
    assert type(loaded) is LongShortLM and loaded.config == config


def test_tampered_weights_missing_files_and_bad_configs_are_refused(tmp_path):
    folder = export_model_folder(tiny(), TOKENIZER, tmp_path / "m")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_model_folder(folder)

    folder = export_model_folder(tiny(), TOKENIZER, tmp_path / "n")
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_model_folder(folder)

    folder = export_model_folder(tiny(), TOKENIZER, tmp_path / "o")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "d_model": 32}))
    with pytest.raises(ValueError, match="do not fit the config|shape"):
        load_model_folder(folder)
    (folder / "config.json").write_text(json.dumps({**config, "d_model": 10 ** 9}))
    with pytest.raises(ValueError, match="limit"):
        load_model_folder(folder)


def test_unknown_pretrained_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="no shipped model called 'nope'"):
        load_pretrained("nope")


def test_cli_export_then_sample_from_the_folder(tmp_path, capsys):
    from hourglass_edu.data import prepare_data
    from hourglass_edu.data.corpora import Corpus
    from hourglass_edu.training import TrainConfig, train

    data = prepare_data(Corpus("toy", [f"abc defg hab {i % 10}\n" * 3 for i in range(40)]),
                        val_fraction=0.1)
    model = tiny_hourglass(data.tokenizer.vocab_size, d_model=16, max_length=32)
    train(model, data, TrainConfig(steps=2, batch_size=2, block_size=16, progress=False,
                                   device="cpu", precision="fp32"),
          checkpoint_path=tmp_path / "run" / "checkpoint.pt")
    assert main(["export", "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "m")]) == 0
    assert main(["sample", "--ckpt", str(tmp_path / "m"), "--prompt", "ab",
                 "--max-new-tokens", "5", "--seed", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("ab")
