"""Careless and hostile command lines (issue 32): one device check before any work, a `models`
listing that survives a damaged card, Ctrl-C while torch imports, on/off environment variables,
`evaluate` scoring the corpus a run was really trained on, and `tools/gpu_check.py` checking its
options before its checks. Every test runs `main([...])` in this process unless it must start
one."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import tiny_hourglass

import hourglass_edu.data
import hourglass_edu.pretrained as pretrained
from hourglass_edu import course
from hourglass_edu.cli import main
from hourglass_edu.data import prepare_data
from hourglass_edu.data.provenance import corpus_sha256
from hourglass_edu.devices import resolve_device
from hourglass_edu.training import TrainConfig, load_checkpoint, train
from hourglass_edu.training.checkpoints import model_source, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
# The folder holding the package under test (the checkout, unless PYTHONPATH names another copy):
# what every command started here runs.
PACKAGE_ROOT = Path(hourglass_edu.data.__file__).resolve().parents[2]


def package_env(**changes) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **changes}


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_:  # argparse refusing an option
        code = exit_.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.out, captured.err


def one_line(err: str, *words: str) -> None:
    assert err.count("\n") == 1, err
    for word in words:
        assert word in err, err


@pytest.fixture
def nothing_may_load(monkeypatch):
    """Fail the test if a corpus or a model is read before the refusal."""
    def refuse(*args, **kwargs):
        raise AssertionError("a corpus or model was loaded before the options were checked")

    for name in ("prepare_data", "load_corpus"):
        monkeypatch.setattr(hourglass_edu.data, name, refuse)
    monkeypatch.setattr(pretrained, "load_model_folder", refuse)
    import hourglass_edu.training as training
    monkeypatch.setattr(training, "load_checkpoint", refuse)


# --- one device check, before any work -----------------------------------------------------------

COMMANDS = {
    "sample": ["sample", "--pretrained", "haiku"],
    "evaluate": ["evaluate", "--pretrained", "haiku"],
    "train": ["train", "--corpus", "haiku", "--preset", "smoke", "--out", "{tmp}/run"],
    "finetune": ["finetune", "--from", "{tmp}/base", "--corpus", "haiku", "--out", "{tmp}/ft"],
    "demo": ["demo", "--preset", "smoke", "--out", "{tmp}/demo"],
}


@pytest.mark.parametrize("device", ["meta", "lazy", "hpu", "xla", "ipu", "mkldnn", "cuda:-1",
                                    "CPU", "", " cpu"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_device_the_library_cannot_compute_on_is_refused_before_any_load(
        command, device, capsys, tmp_path, nothing_may_load):
    argv = [part.format(tmp=tmp_path) for part in COMMANDS[command]]
    code, out, err = run(capsys, *argv, "--device", device)
    assert code == 2 and out == ""
    one_line(err, "--device", repr(device) if device else "''")
    assert not any(tmp_path.iterdir())


def test_the_device_check_names_what_it_takes():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert resolve_device("sim").type == "sim"  # the test suite's registered backend
    for name in ("meta", "lazy", "hpu", "mkldnn"):
        with pytest.raises(ValueError, match="not one this library computes on") as refused:
            resolve_device(name)
        assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")


@pytest.mark.slow
@pytest.mark.parametrize("device", ["privateuseone", "hpu"])
def test_a_device_whose_backend_is_missing_is_one_line_in_a_plain_process(device, tmp_path):
    """Without a registered backend (no simulated device in that process), torch knows these
    names but has no module for them: once a ModuleNotFoundError, after the model loaded."""
    env = {**package_env(), "PYTHONPATH": str(PACKAGE_ROOT)}
    env.pop("HOURGLASS_EDU_SIMULATED_DEVICE", None)
    done = subprocess.run([sys.executable, "-m", "hourglass_edu", "sample", "--pretrained",
                           "haiku", "--device", device], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    one_line(done.stderr, f"device {device!r} is not one this library computes on")


def test_an_unregistered_private_backend_is_refused(monkeypatch):
    monkeypatch.setattr(torch._C, "_get_privateuse1_backend_name", lambda: "privateuseone")
    with pytest.raises(ValueError, match="'sim' is not one this library computes on"):
        resolve_device("sim")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_gpus_torch_does_not_see_are_refused_in_one_line():
    for name in ("cuda", "cuda:1", "mps", "xpu"):
        with pytest.raises(ValueError, match="torch sees no"):
            resolve_device(name)


def test_every_loader_refuses_the_meta_device_before_reading(tmp_path):
    from hourglass_edu import load_model, load_pretrained

    for load in (lambda: load_pretrained("haiku", device="meta"),
                 lambda: load_model(tmp_path / "missing", device="meta")):
        with pytest.raises(ValueError, match="'meta' is not one"):
            load()


def test_notebooks_device_variable_goes_through_the_same_check():
    assert course.default_device({"HOURGLASS_EDU_DEVICE": "sim"}) == "sim"
    assert course.default_device({"HOURGLASS_EDU_DEVICE": "auto"}) in ("cpu", "cuda")
    with pytest.raises(ValueError, match="HOURGLASS_EDU_DEVICE='meta'.*not one"):
        course.default_device({"HOURGLASS_EDU_DEVICE": "meta"})


# --- `models` with a damaged card ----------------------------------------------------------------

CARD = {"corpus": "haiku", "structure": "2@1 8@3 2@1", "parameters": 2415616,
        "training_seconds": 9809, "steps": 12400, "val_bpc": 1.844}


def shipped(tmp_path: Path, monkeypatch, **damaged_card_lines) -> Path:
    """Two shipped models, `good` and `tampered` (whose card lines are replaced as given, raw)."""
    for name in ("good", "tampered"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"")
        lines = {key: json.dumps(value) for key, value in CARD.items()}
        if name == "tampered":
            lines.update(damaged_card_lines)
        (folder / "README.md").write_text(
            "---\n" + "".join(f"{key}: {value}\n" for key, value in lines.items()) + "---\n")
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    return tmp_path / "tampered" / "README.md"


@pytest.mark.parametrize("field,raw", [
    ("training_seconds", '"9809"'), ("val_bpc", "null"), ("corpus", '["haiku"]'),
    ("parameters", '"2,415,616"'), ("steps", "12.5"), ("structure", "5"), ("val_bpc", "NaN"),
    ("training_seconds", "-60"), ("corpus", '"ha\\niku"'),
    ("structure", json.dumps("1@1 " * 100)), ("steps", "true"),
])
def test_models_lists_every_card_and_marks_a_bad_field(field, raw, tmp_path, monkeypatch,
                                                       capsys):
    card = shipped(tmp_path, monkeypatch, **{field: raw})
    code, out, err = run(capsys, "models")
    rows = out.splitlines()
    assert code == 1 and len(rows) == 3
    assert rows[1].split() == ["good", "haiku", "2@1", "8@3", "2@1", "2,415,616", "163",
                               "12,400", "1.844"]
    assert rows[2].startswith("tampered") and rows[2].split().count("bad") == 1
    assert f"{card}: {field} is" in err.splitlines()[0] and "reinstall" in err
    assert all(len(line) < 300 for line in err.splitlines())


# not JSON; beyond the strict reader's 30 digits (json_files); beyond int()'s digits
@pytest.mark.parametrize("raw", ["12,400", "9" * 100, "9" * 5000])
def test_models_lists_a_card_it_cannot_read_as_unknown(raw, tmp_path, monkeypatch, capsys):
    card = shipped(tmp_path, monkeypatch, steps=raw)
    code, out, err = run(capsys, "models")
    assert code == 1 and out.splitlines()[2].split()[1:] == ["bad"] * 6
    assert str(card) in err.splitlines()[0]


def test_models_lists_a_missing_field_as_unknown_without_complaint(tmp_path, monkeypatch,
                                                                  capsys):
    shipped(tmp_path, monkeypatch)
    (tmp_path / "good" / "README.md").write_text('---\nname: "good"\n---\n')
    code, out, err = run(capsys, "models")
    assert code == 0 and err == ""
    assert out.splitlines()[1].split()[1:] == ["?"] * 6


# --- Ctrl-C while the command line starts --------------------------------------------------------

def test_ctrl_c_while_the_command_line_is_read_exits_130_in_one_line(monkeypatch, capsys):
    import hourglass_edu.cli as cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    code, out, err = run(capsys, "models")
    assert code == 130 and out == ""
    one_line(err, "interrupted (Ctrl-C)")


INTERRUPT_TORCH_IMPORT = """
import sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt  # Ctrl-C, as it lands while torch imports
sys.meta_path.insert(0, Interrupt())
"""


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["models"], ["sample", "--pretrained", "haiku"], ["--help"]])
def test_ctrl_c_while_torch_imports_exits_130_without_a_traceback(argv, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(INTERRUPT_TORCH_IMPORT)
    env = package_env(PYTHONPATH=os.pathsep.join([str(tmp_path), str(PACKAGE_ROOT)]))
    done = subprocess.run([sys.executable, "-m", "hourglass_edu", *argv], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    if argv == ["--help"]:  # the help needs no torch at all
        assert done.returncode == 0 and "COMMAND" in done.stdout, done.stderr
        return
    assert done.returncode == 130, done.stderr
    assert done.stderr.startswith("interrupted (Ctrl-C)") and done.stderr.count("\n") == 1


# --- on/off environment variables ----------------------------------------------------------------

@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "on", " 1", "Yes\n"])
def test_smoke_switch_takes_the_usual_spellings_of_on(text):
    assert course.default_profile({"HOURGLASS_EDU_SMOKE": text}, cuda_available=False) == "smoke"


@pytest.mark.parametrize("text", ["", "0", "false", "no", "off", " OFF "])
def test_smoke_switch_takes_the_usual_spellings_of_off(text):
    assert course.default_profile({"HOURGLASS_EDU_SMOKE": text}, cuda_available=False) == "cpu"


@pytest.mark.parametrize("text", ["2", "smoke", "y e s", "1.0", "tru"])
def test_smoke_switch_refuses_anything_else_naming_the_variable(text):
    with pytest.raises(ValueError, match="HOURGLASS_EDU_SMOKE=.* is neither on nor off"):
        course.default_profile({"HOURGLASS_EDU_SMOKE": text}, cuda_available=False)


# --- `evaluate` scores the corpus a run was trained on --------------------------------------------

def write_poems(path: Path, seed: int = 0) -> Path:
    import random

    rng = random.Random(seed)
    words = "the old pond a frog jumps in sound of water moon".split()
    poems = ["\n".join(" ".join(rng.choice(words) for _ in range(3)) for _ in range(3))
             for _ in range(60)]
    path.write_text("\n\n".join(poems) + "\n", encoding="utf-8")
    return path


def trained_run(corpus: Path, out: Path) -> Path:
    data = prepare_data(corpus, val_fraction=0.1)
    model = tiny_hourglass(data.tokenizer.vocab_size, d_model=16, max_length=32)
    config = TrainConfig(steps=1, batch_size=2, block_size=16, warmup_steps=0, eval_every=50,
                         eval_batches=1, precision="fp32", progress=False, device="cpu")
    train(model, data, config, checkpoint_path=out / "checkpoint.pt")
    return out


def evaluate(capsys, run_folder, *more):
    return run(capsys, "evaluate", "--ckpt", run_folder, "--max-tokens", "40",
               "--val-fraction", "0.1", *more)


def test_a_run_records_its_own_corpus_file_and_evaluate_scores_that_file(tmp_path, capsys):
    small = write_poems(tmp_path / "small.txt")
    run_folder = trained_run(small, tmp_path / "run")
    data = load_checkpoint(run_folder)["data"]
    assert data["corpus"] == "small" and data["corpus_path"] == str(small.resolve())
    assert data["corpus_sha256"] == corpus_sha256(hourglass_edu.data.load_corpus(small).documents)
    code, out, err = evaluate(capsys, run_folder)
    assert code == 0 and f"{small.resolve()} validation split" in out, err

    write_poems(small, seed=1)  # the file changed since training
    code, _, err = evaluate(capsys, run_folder)
    assert code == 2
    one_line(err, str(small.resolve()), "is not the text", "--corpus")
    small.unlink()
    code, _, err = evaluate(capsys, run_folder)
    assert code == 2
    one_line(err, "no longer there", "--corpus PATH")


def test_a_file_of_yours_called_haiku_is_never_scored_as_the_registered_haiku(
        tmp_path, capsys, monkeypatch):
    mine = write_poems(tmp_path / "haiku.txt")
    run_folder = trained_run(mine, tmp_path / "run")
    assert load_checkpoint(run_folder)["data"]["corpus_path"] == str(mine.resolve())
    registered = []
    real_load = hourglass_edu.data.load_corpus
    monkeypatch.setattr(hourglass_edu.data, "load_corpus",
                        lambda source, *a, **k: registered.append(source) or real_load(source))
    code, out, err = evaluate(capsys, run_folder)
    assert code == 0 and registered == [str(mine.resolve())], err
    mine.unlink()
    code, _, err = evaluate(capsys, run_folder)
    assert code == 2 and registered == [str(mine.resolve())]  # not "haiku" after it went
    one_line(err, "no longer there")


def test_a_run_recorded_before_corpus_paths_says_what_to_pass(tmp_path, capsys):
    small = write_poems(tmp_path / "small.txt")
    run_folder = trained_run(small, tmp_path / "run")
    checkpoint = load_checkpoint(run_folder)
    for key in ("corpus_path", "corpus_sha256"):
        del checkpoint["data"][key]
    save_checkpoint(model_source(run_folder), checkpoint)  # the file evaluate reads
    code, _, err = evaluate(capsys, run_folder)
    assert code == 2
    one_line(err, "called 'small'", "not a registered corpus", "--corpus PATH")
    code, out, err = evaluate(capsys, run_folder, "--corpus", small)
    assert code == 0 and "bits per character" in out, err


def test_an_exported_run_keeps_its_corpus_record(tmp_path, capsys):
    small = write_poems(tmp_path / "small.txt")
    run_folder = trained_run(small, tmp_path / "run")
    code, _, err = run(capsys, "export", "--ckpt", run_folder, "--out", tmp_path / "model")
    assert code == 0, err
    code, out, err = evaluate(capsys, tmp_path / "model")
    assert code == 0 and str(small.resolve()) in out, err
    write_poems(small, seed=2)
    code, _, err = evaluate(capsys, tmp_path / "model")
    assert code == 2 and "is not the text" in err


@pytest.mark.slow  # reads the real haiku corpus twice
def test_a_model_folder_without_a_record_is_scored_with_a_note(tmp_path, capsys, corpus_dir,
                                                              monkeypatch):
    monkeypatch.setenv("HOURGLASS_EDU_DATA", str(corpus_dir))
    folder = Path(shutil.copytree(pretrained.PRETRAINED_DIR / "haiku", tmp_path / "haiku"))
    code, out, err = run(capsys, "evaluate", "--ckpt", folder, "--max-tokens", "100",
                         "--batch-size", "2")
    assert code == 0 and "haiku validation split" in out
    one_line(err, "note:", "records no sha256")
    code, out, err = run(capsys, "evaluate", "--pretrained", "haiku", "--max-tokens", "100",
                         "--batch-size", "2")
    assert code == 0 and err == ""  # a shipped model's corpus is a pinned, registered one


def test_resuming_does_not_compare_where_the_corpus_lies(tmp_path):
    from hourglass_edu.training.checkpoints import data_fingerprint, resumable_differences

    small = write_poems(tmp_path / "small.txt")
    data = prepare_data(small, val_fraction=0.1)
    checkpoint_data = {**data_fingerprint(data), "corpus_path": "/elsewhere/small.txt"}
    old = {key: value for key, value in checkpoint_data.items() if not key.startswith("corpus_")}
    model = tiny_hourglass(data.tokenizer.vocab_size, d_model=16, max_length=32)
    config = TrainConfig(steps=1)
    for saved in (checkpoint_data, old):
        checkpoint = {"model_config": model.config.to_dict(), "train_config": config.to_dict(),
                      "tokenizer": data.tokenizer.to_dict(), "data": saved}
        assert resumable_differences(checkpoint, model, config, data.tokenizer,
                                     data_fingerprint(data)) == []


# --- tools/gpu_check.py checks its options first --------------------------------------------------

@pytest.fixture
def gpu_check(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "tools" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # its dataclass looks it up there
    spec.loader.exec_module(module)

    def never(*args, **kwargs):
        raise AssertionError("a check ran before the options were checked")

    for name in ("check_notebooks", "check_training", "check_generation", "check_torchrun"):
        monkeypatch.setattr(module, name, never)
    return module


@pytest.mark.parametrize("argv,words", [
    (["--steps", "-1"], "--steps"), (["--steps", "0"], "--steps"), (["--chars", "0"], "--chars"),
    (["--device", "cpu"], "--device"), (["--notebooks", "no-such-notebook"], "--notebooks"),
    (["--data-dir", "/no/such/folder"], "--data-dir"), (["--out", "{tmp}"], "is a folder"),
    (["--out", "/dev/null/gpu_check.md"], "cannot write"),
])
def test_gpu_check_refuses_a_bad_option_before_any_check(argv, words, gpu_check, tmp_path,
                                                         capsys):
    argv = [part.format(tmp=tmp_path) for part in argv]
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--device", "sim", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    one_line(err, "gpu_check: error:", words)


# --- the audit: more careless command lines ------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["corpus", ""], ["corpus", "haiku", "--data-dir", " "],
    ["train", "--corpus", "", "--preset", "smoke", "--out", "{tmp}/run"],
    ["train", "--corpus", "haiku", "--preset", "smoke", "--out", ""],
    ["finetune", "--from", "", "--corpus", "haiku", "--out", "{tmp}/ft"],
    ["demo", "--out", "  "], ["sample", "--ckpt", ""], ["sample", "--pretrained", ""],
    ["evaluate", "--pretrained", "haiku", "--corpus", ""], ["export", "--ckpt", "", "--out", "x"],
])
def test_an_empty_name_or_path_is_refused_not_read_as_the_current_folder(
        argv, capsys, tmp_path, monkeypatch, nothing_may_load):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("my own notes\n\nnot a corpus\n")
    code, out, err = run(capsys, *[part.format(tmp=tmp_path) for part in argv])
    assert code == 2 and out == ""
    one_line(err, "is empty")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


def test_a_profile_name_is_taken_in_any_case():
    assert course.default_profile({"HOURGLASS_EDU_PROFILE": " Smoke "}) == "smoke"


def test_a_checkpoint_whose_data_entry_is_damaged_asks_for_the_corpus(tmp_path, capsys):
    run_folder = trained_run(write_poems(tmp_path / "small.txt"), tmp_path / "run")
    checkpoint = load_checkpoint(run_folder)
    checkpoint["data"] = ["not", "a", "dict"]
    save_checkpoint(model_source(run_folder), checkpoint)  # the file evaluate reads
    code, _, err = evaluate(capsys, run_folder)
    assert code == 2   # refused as the file is read (checkpoint_checks), in one line
    one_line(err, "entry 'data' should be dict", "the file is damaged")


def command(*argv, env=None, **popen) -> subprocess.CompletedProcess:
    """`python -m hourglass_edu ARGV` of the package under test (one thread)."""
    return subprocess.run([sys.executable, "-m", "hourglass_edu", *map(str, argv)],
                          cwd=PACKAGE_ROOT, env=package_env(**(env or {})), timeout=300, **popen)


@pytest.mark.slow
def test_a_reader_that_stops_reading_ends_the_command_quietly():
    done = subprocess.Popen([sys.executable, "-m", "hourglass_edu", "sample", "--pretrained",
                             "haiku", "--max-new-tokens", "100000", "--no-stop-at-end"],
                            cwd=PACKAGE_ROOT, env=package_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    done.stdout.read(20)
    done.stdout.close()  # `| head -c 20`
    _, err = done.communicate(timeout=300)
    assert done.returncode == 141 and err == b"", err


@pytest.mark.slow
def test_output_to_a_full_disk_is_one_line():
    with open("/dev/full", "w") as full:
        done = command("models", stdout=full, stderr=subprocess.PIPE, text=True)
    assert done.returncode == 2
    one_line(done.stderr, "cannot write the output", "No space left", "disk is full")


@pytest.mark.slow
def test_sample_with_stdout_closed_still_ends_well():
    done = command("sample", "--pretrained", "haiku", "--max-new-tokens", "5",
                   preexec_fn=lambda: os.close(1), stderr=subprocess.PIPE, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.slow
def test_a_name_the_terminal_cannot_encode_is_printed_escaped(tmp_path):
    run_folder = trained_run(write_poems(tmp_path / "small.txt"), tmp_path / "run")
    out = tmp_path / "café"
    done = command("export", "--ckpt", run_folder, "--out", out, capture_output=True,
                   text=True, env={"PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0 and "caf\\xe9" in done.stdout, done.stderr
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_a_shipped_model_name_given_as_ckpt_points_to_pretrained(command, capsys, tmp_path,
                                                                 monkeypatch, nothing_may_load):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, command, "--ckpt", "haiku")
    assert code == 2
    one_line(err, "--ckpt haiku: no checkpoint, run folder or model folder", "--pretrained haiku")
    code, _, err = run(capsys, command, "--ckpt", "runs/typo")
    assert code == 2
    one_line(err, "--ckpt runs/typo: no checkpoint", "check the path")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("argv", [
    ["train", "--corpus", "haiku", "--preset", "smoke", "--out", "{tmp}/run"],
    ["finetune", "--from", "{tmp}/base", "--corpus", "haiku", "--out", "{tmp}/ft"],
    ["demo", "--preset", "smoke", "--out", "{tmp}/demo"],
])
def test_fp16_without_a_gpu_is_refused_before_the_corpus_loads(argv, capsys, tmp_path,
                                                               nothing_may_load):
    argv = [part.format(tmp=tmp_path) for part in argv]
    code, out, err = run(capsys, *argv, "--precision", "fp16", "--device", "cpu")
    assert code == 2 and out == ""
    one_line(err, "--precision fp16 with --device cpu", "needs a CUDA GPU")
    assert not any(tmp_path.iterdir())
