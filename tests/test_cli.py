"""The command line: every subcommand's --help, and `corpus`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hourglass_edu import cli

REPO_ROOT = Path(__file__).resolve().parents[1]


def registered_subcommands() -> list[str]:
    parser = cli.build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(action.choices)


def test_corpus_is_registered():
    assert "corpus" in registered_subcommands()


@pytest.mark.parametrize("name", registered_subcommands())
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main([name, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m hourglass_edu " + name)
    assert len(out.splitlines()) > 3  # a description and arguments, not just a usage line


@pytest.mark.slow  # a subprocess
def test_module_entry_point_help():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "hourglass_edu", "--help"], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "corpus" in result.stdout


def test_corpus_prints_statistics_of_a_local_folder(tmp_path, capsys):
    for i in range(20):
        (tmp_path / f"{i:02}.txt").write_text("ab" * (i + 1) + "\n", encoding="utf-8")
    assert cli.main(["corpus", str(tmp_path), "--val-fraction", "0.1", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "documents:   20\n" in out
    assert f"characters:  {sum(2 * (i + 1) for i in range(20))}\n" in out
    assert "vocabulary:  3 tokens (2 characters + <eot>)" in out
    assert "train:     18 documents" in out and "val:       2 documents" in out
    assert "seed 3, val_fraction 0.1" in out


def test_corpus_unknown_name_fails_with_the_known_names(capsys):
    assert cli.main(["corpus", "no-such-corpus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown corpus 'no-such-corpus'") and "haiku, lovecraft" in err


@pytest.mark.corpus
@pytest.mark.parametrize("name, documents", [("haiku", "60,835"), ("lovecraft", "67")])
def test_corpus_on_the_real_data(name, documents, corpus_dir, capsys):
    assert cli.main(["corpus", name, "--data-dir", str(corpus_dir), "--no-download"]) == 0
    assert f"documents:   {documents}\n" in capsys.readouterr().out
