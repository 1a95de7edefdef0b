"""The benchmark scripts run as docs/benchmarks.md shows (`python benchmarks/NAME.py`), in their
smoke modes, and their tables name the machine (the CPU model, not just "x86_64") and keep their
columns. Timings are not checked: a smoke run on a busy machine measures nothing."""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

def cpu_model() -> str:
    """What a table must name: /proc/cpuinfo's model name where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"^model name\s*:\s*(.+?)\s*$", cpuinfo.read_text() if cpuinfo.exists()
                       else "", flags=re.MULTILINE)
    return names[0] if names else platform.processor() or platform.machine()


def run_benchmark(script: str, out: Path, *arguments: str) -> str:
    """Run benchmarks/`script` on one CPU thread against this checkout; the table it wrote."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT),
                                                        os.environ.get("PYTHONPATH", "")]),
           "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, f"benchmarks/{script}", *arguments, "--device", "cpu", "--out",
               str(out)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"wrote {out}" in result.stdout
    return out.read_text()


def markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in `text`, as rows of {column heading: cell}."""
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("|") and re.fullmatch(r"\|(\s*-+:?\s*\|)+", lines[i + 1]):
            if i > 0 and lines[i - 1].startswith("|"):
                continue  # a separator-like row inside a table
            headings = cells(line)
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(headings, cells(row), strict=True)))
            tables.append(rows)
    return tables


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def number(cell: str) -> float:
    """'1.99x', '106%', '1.78x less', '2773' -> the number."""
    return float(re.match(r"[-+]?[\d.]+", cell.replace(",", "")).group())


def table_with(tables, column: str) -> list[dict[str, str]]:
    found = [table for table in tables if table and column in table[0]]
    assert len(found) == 1, f"expected one table with a {column!r} column, found {len(found)}"
    return found[0]


@pytest.mark.slow
def test_bench_model_quick_measures_both_models_and_derives_its_ratios(tmp_path):
    table = run_benchmark("bench_model.py", tmp_path / "model.md", "--quick")
    assert f"device cpu ({cpu_model()}, " in table
    assert "Command: `python benchmarks/bench_model.py --quick --device cpu`" in table
    assert check_model_table(table) == 4  # 2 lengths x 2 precisions


def test_the_committed_model_table_is_what_the_script_derives():
    text = (REPO_ROOT / "benchmarks" / "results" / "bench_model.md").read_text(encoding="utf-8")
    assert check_model_table(text) == 6  # 3 lengths x 2 precisions


def check_model_table(table: str) -> int:
    """Assert that every ratio follows from the measured rows; returns the number of runs."""
    tables = markdown_tables(table)
    measured, ratios = table_with(tables, "tokens/s"), table_with(tables, "measured speed-up")
    runs = {(row["seq"], row["precision"]): {} for row in measured}
    assert len(measured) == 2 * len(runs) == 2 * len(ratios)  # a hourglass and a plain row each
    for row in measured:
        kind = "hourglass" if row["model"].startswith("hourglass") else "plain"
        runs[row["seq"], row["precision"]][kind] = row
    tokens_per_step = int(re.search(r"(\d+) tokens per step", table).group(1))
    for row in ratios:
        hourglass, plain = runs[row["seq"], row["precision"]].values()
        for model in (hourglass, plain):  # tokens/s is the tokens of a step over its time
            assert number(model["tokens/s"]) * number(model["step (s)"]) == pytest.approx(
                tokens_per_step, rel=0.02)
        speed_up = number(hourglass["tokens/s"]) / number(plain["tokens/s"])
        predicted = number(plain["GFLOP/token (fwd)"]) / number(hourglass["GFLOP/token (fwd)"])
        memory = (number(plain["saved activations (MiB)"])
                  / number(hourglass["saved activations (MiB)"]))
        assert predicted > 1  # the hourglass does less work per token than the plain stack
        assert number(row["measured speed-up"]) == pytest.approx(speed_up, abs=0.011)
        assert number(row["FLOP-predicted speed-up"]) == pytest.approx(predicted, rel=0.02)
        assert number(row["measured / predicted"]) == pytest.approx(
            100 * speed_up / predicted, abs=2)
        assert number(row["activation memory ratio"]) == pytest.approx(memory, abs=0.011)
    return len(runs)


@pytest.mark.slow
def test_bench_generate_threads_only_compares_one_and_two_threads(tmp_path):
    table = run_benchmark("bench_generate.py", tmp_path / "generate.md", "--quick",
                          "--threads-only", "--lengths", "16", "--repeats", "1")
    assert f"device cpu ({cpu_model()}, " in table
    assert len(markdown_tables(table)) == 2  # --threads-only: cached / recompute is skipped
    check_threads_table(table, "16")


def test_the_committed_threads_table_is_what_the_script_derives():
    path = REPO_ROOT / "benchmarks" / "results" / "bench_generate_threads.md"
    check_threads_table(path.read_text(encoding="utf-8"), "512")


def check_threads_table(table: str, new_chars: str) -> None:
    tables = markdown_tables(table)
    by_threads = {row["threads"]: row for row in table_with(tables, "busy / quiet")}
    assert set(by_threads) == {"1", "2"}
    for row in by_threads.values():
        assert row["new chars"] == new_chars
        assert number(row["busy / quiet"]) == pytest.approx(
            number(row["busy chars/s"]) / number(row["quiet chars/s"]), abs=0.011)
    (one_over_two,) = table_with(tables, "1 / 2 threads, quiet")
    for setting in ("quiet", "busy"):
        expected = (number(by_threads["1"][f"{setting} chars/s"])
                    / number(by_threads["2"][f"{setting} chars/s"]))
        assert number(one_over_two[f"1 / 2 threads, {setting}"]) == pytest.approx(
            expected, rel=0.05, abs=0.011)


def test_markdown_tables_are_read_by_their_headings():
    text = "Intro\n\n| a | b |\n|---|---:|\n| 1 | 2.5x |\n| 3 | 4% |\n\nafter\n"
    assert markdown_tables(text) == [[{"a": "1", "b": "2.5x"}, {"a": "3", "b": "4%"}]]
    assert [number(c) for c in ("1.99x", "106%", "1.78x less", "2,773")] == [1.99, 106, 1.78,
                                                                              2773]


def race_rows(text: str) -> dict[str, dict[str, str]]:
    return {row["candidate"]: row for row in table_with(markdown_tables(text), "val bpc")}


def race_options(row: dict[str, str]) -> dict[str, str]:
    """The options cell of a race row, `--name value` pairs, as a dict."""
    words = shlex.split(row["options"].strip("`"))
    return dict(zip(words[::2], words[1::2], strict=True))


@pytest.mark.slow
def test_tune_demo_quick_races_the_candidates_and_names_the_lowest(tmp_path):
    corpus = tmp_path / "poems.txt"
    corpus.write_text("\n\n".join(f"an old pond {i}\na frog jumps in\nthe sound of water"
                                  for i in range(300)))
    runs = tmp_path / "runs"
    arguments = ["--quick", "--runs", str(runs), "--corpus", str(corpus), "--only", "block128"]
    table = run_benchmark("tune_demo.py", tmp_path / "tune.md", *arguments)
    assert f"device cpu ({cpu_model()}, " in table
    rows = race_rows(table)
    assert list(rows) == ["today", "block128"]  # today's recipe always races
    assert race_options(rows["block128"])["--block-size"] == "128"
    lowest = min(rows, key=lambda name: number(rows[name]["val bpc"]))
    assert f"Lowest: **{lowest}**" in table
    assert all((runs / name / "done.json").is_file() for name in rows)
    again = run_benchmark("tune_demo.py", tmp_path / "again.md", *arguments)
    assert race_rows(again) == rows  # finished candidates are measured again, not retrained


def test_the_demo_trains_the_winner_of_the_committed_race():
    """`demo` (the cpu preset) is the recipe that reached the lowest bpc in
    benchmarks/results/tune_demo.md, and the table's verdict is its own lowest row."""
    from hourglass_edu.training import PRESETS

    text = (REPO_ROOT / "benchmarks" / "results" / "tune_demo.md").read_text()
    rows = race_rows(text)
    assert len(rows) >= 4 and "today" in rows  # today's recipe and at least 3 others
    winner = min(rows, key=lambda name: number(rows[name]["val bpc"]))
    assert f"Lowest: **{winner}**" in text
    preset, options = PRESETS["cpu"], race_options(rows[winner])
    assert float(options.pop("--lr")) == preset.train.lr
    assert options == {
        "--structure": preset.model["structure"], "--d-model": str(preset.model["d_model"]),
        "--n-heads": str(preset.model["n_heads"]),
        "--batch-size": str(preset.train.batch_size),
        "--block-size": str(preset.train.block_size),
    }


@pytest.mark.slow
@pytest.mark.corpus
def test_train_pretrained_smoke_trains_in_stages_and_exports_cards(tmp_path, corpus_dir):
    """The script that makes the shipped models, end to end on tiny models: a two-stage job
    resumes its own run with dropout for its second stage, lovecraft-haiku waits for that second
    stage, each card gives the commands that made it, and a second call retrains nothing."""
    runs, models = tmp_path / "runs", tmp_path / "models"
    env = {**os.environ, "HOURGLASS_EDU_DATA": str(corpus_dir), "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "benchmarks/train_pretrained.py", "--runs", str(runs), "--smoke",
               "--export-to", str(models)]
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "finished a stage of haiku" in result.stdout

    done = json.loads((runs / "haiku" / "done.json").read_text())
    first, second = (stage["command"] for stage in done["stages"])
    assert "--resume" not in first and first[first.index("--steps") + 1] == "40"
    assert "--resume" in second and second[second.index("--dropout") + 1] == "0.1"
    assert "resuming with a changed setting: dropout: checkpoint 0.0, now 0.1" in (
        runs / "haiku.log").read_text()

    from hourglass_edu.model_folders import read_card
    from hourglass_edu.training import load_checkpoint

    card = read_card(models / "haiku")
    assert card["steps"] <= 60
    text = (models / "haiku" / "README.md").read_text()
    assert "**Two stages.** The run was resumed at step" in text and "dropout 0.1" in text
    assert card["job_command"].count("python -m hourglass_edu train") == 2
    assert " then " in card["job_command"] and card["job_command"].endswith("--resume")
    base = load_checkpoint(runs / "lovecraft-haiku")["metadata"]["finetuned_from"]
    assert base["step"] == load_checkpoint(runs / "lovecraft" / "best.pt")["step"]
    lovecraft = json.loads((runs / "lovecraft" / "done.json").read_text())["stages"]
    fine_tuning = json.loads((runs / "lovecraft-haiku" / "done.json").read_text())
    assert len(lovecraft) == 2 and fine_tuning["started"] >= lovecraft[1]["finished"]
    assert read_card(models / "lovecraft-plain")["job_command"].count(" then ") == 0

    again = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "started" not in again.stdout and again.stdout.count("already exported") == 5
