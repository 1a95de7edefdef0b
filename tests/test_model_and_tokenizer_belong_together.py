"""A model and its tokenizer belong together: loaders and `train` note the tokenizer's vocabulary
(`vocabulary_sha256`) on the model, and generation, export, the widgets and folder loading refuse
another one, while folders exported before the note (the shipped models) keep loading."""

from __future__ import annotations

import shutil

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
from tiny import tiny_hourglass, tiny_train_config  # noqa: E402

from hourglass_edu import generate, widgets  # noqa: E402
from hourglass_edu.data import CharTokenizer  # noqa: E402
from hourglass_edu.generation import stream  # noqa: E402
from hourglass_edu.model_folders import export_model_folder, load_model_folder  # noqa: E402
from hourglass_edu.pretrained import load_pretrained, pretrained_folder  # noqa: E402
from hourglass_edu.training import (  # noqa: E402
    load_checkpoint,
    model_from_checkpoint,
    train,
)

OWN = CharTokenizer("abcdefgh \n")
OTHER = CharTokenizer("hgfedcba \n")  # same size, but every letter's id means another letter
NOT_OURS = "not the one this model was loaded or trained with"


def tiny(vocab_size=OWN.vocab_size, seed=0):
    return tiny_hourglass(vocab_size, seed=seed, d_model=16, max_length=32).eval()


@pytest.fixture
def exported(tmp_path):
    """A model folder exported with OWN, and one of the same size exported with OTHER."""
    own = export_model_folder(tiny(), OWN, tmp_path / "own")
    other = export_model_folder(tiny(seed=1), OTHER, tmp_path / "other")
    return own, other


def test_a_loaded_model_refuses_another_models_tokenizer_of_the_same_size(exported):
    own, other = exported
    model, tokenizer = load_model_folder(own)
    _, other_tokenizer = load_model_folder(other)
    assert tokenizer == OWN and model.vocabulary_sha256 == OWN.vocabulary_sha256
    generate(model, tokenizer, "abc", 5, seed=0)  # its own tokenizer works
    for call in (lambda: generate(model, other_tokenizer, "abc", 5, seed=0),
                 lambda: stream(model, other_tokenizer, "abc", 5, seed=0),
                 lambda: widgets.generation_demo(model, other_tokenizer),
                 lambda: widgets.attention_explorer(model, other_tokenizer, "abc"),
                 lambda: export_model_folder(model, other_tokenizer, own.parent / "mixed")):
        with pytest.raises(ValueError, match=NOT_OURS):
            call()
    assert not (own.parent / "mixed").exists()


def test_a_tokenizer_of_another_size_is_refused_before_the_model_runs():
    model = tiny(vocab_size=OWN.vocab_size + 3)  # built here: no vocabulary noted, sizes compared
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    with pytest.raises(ValueError, match=f"{OWN.vocab_size} entries but the model "
                                         f"{OWN.vocab_size + 3} vocabulary rows"):
        generate(model, OWN, "abc", 5)
    with pytest.raises(ValueError, match="vocabulary rows"):
        widgets.generation_demo(model, OWN)
    assert calls == []


def test_a_tokenizer_json_swapped_into_a_folder_is_refused_at_loading(exported):
    own, other = exported
    shutil.copy(other / "tokenizer.json", own / "tokenizer.json")
    with pytest.raises(ValueError, match="not the tokenizer this model was exported with"):
        load_model_folder(own)


def test_a_folder_exported_before_the_vocabulary_was_recorded_still_loads_and_pairs(exported):
    own, _ = exported
    card = own / "README.md"
    lines = card.read_text(encoding="utf-8").splitlines(keepends=True)
    card.write_text("".join(line for line in lines if not line.startswith("vocabulary_sha256")),
                    encoding="utf-8")
    model, tokenizer = load_model_folder(own)  # the vocabulary comes from its tokenizer.json
    assert model.vocabulary_sha256 == tokenizer.vocabulary_sha256
    with pytest.raises(ValueError, match=NOT_OURS):
        generate(model, OTHER, "abc", 5)


def test_shipped_models_load_unchanged_and_pair_by_vocabulary():
    plain, plain_tokenizer = load_pretrained("lovecraft-plain")
    hourglass, hourglass_tokenizer = load_pretrained("lovecraft-20min")
    haiku, haiku_tokenizer = load_pretrained("haiku")
    assert "vocabulary_sha256" not in (pretrained_folder("haiku") / "README.md").read_text()
    # the equal-compute pair was trained on one vocabulary: each reads the other's tokenizer
    assert plain_tokenizer.vocabulary_sha256 == hourglass_tokenizer.vocabulary_sha256
    generate(hourglass, plain_tokenizer, "The", 3, seed=0)
    with pytest.raises(ValueError, match="vocabulary rows|" + NOT_OURS):
        generate(haiku, hourglass_tokenizer, "The", 3, seed=0)


def test_training_and_its_checkpoint_pair_the_model_with_the_datas_tokenizer(toy_data, tmp_path):
    model = tiny(vocab_size=toy_data.tokenizer.vocab_size)
    train(model, toy_data, tiny_train_config(steps=1, eval_every=1, eval_batches=1),
          checkpoint_path=tmp_path / "run" / "checkpoint.pt")
    assert model.vocabulary_sha256 == toy_data.tokenizer.vocabulary_sha256
    loaded, tokenizer = model_from_checkpoint(load_checkpoint(tmp_path / "run" / "checkpoint.pt"))
    assert loaded.vocabulary_sha256 == tokenizer.vocabulary_sha256 == model.vocabulary_sha256
    shuffled = CharTokenizer(reversed(toy_data.tokenizer.chars))
    with pytest.raises(ValueError, match=NOT_OURS):
        generate(loaded, shuffled, "", 3)


def test_the_vocabulary_fingerprint_is_the_id_to_token_table():
    assert OWN.vocabulary_sha256 == CharTokenizer("abcdefgh \n").vocabulary_sha256
    assert len(OWN.vocabulary_sha256) == 64
    assert OWN.vocabulary_sha256 != OTHER.vocabulary_sha256
    assert OWN.vocabulary_sha256 != CharTokenizer("abcdefgh \n", unk=True).vocabulary_sha256
    # normalization changes how text is read, not what an id means
    assert OWN.vocabulary_sha256 == CharTokenizer("abcdefgh \n", normalize="NFC").vocabulary_sha256
