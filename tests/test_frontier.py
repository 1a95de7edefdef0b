"""benchmarks/frontier.py: its log-spaced curve points, the FLOPs at which a curve reaches a bpc,
the summary rows it derives from the raw json, and a smoke run of the whole script."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def frontier():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # the script imports `common` beside it
    try:
        spec = importlib.util.spec_from_file_location("frontier",
                                                      REPO_ROOT / "benchmarks" / "frontier.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["frontier"] = module  # its dataclass looks its module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("frontier", None)
        sys.path.remove(str(REPO_ROOT / "benchmarks"))


def test_curve_points_are_two_per_doubling_and_end_at_the_budget(frontier):
    assert frontier.curve_steps(80) == [10, 14, 20, 28, 40, 57, 80]
    assert frontier.curve_steps(3) == [3]  # a run shorter than `first`: its last step only


def test_flops_to_reach_interpolates_in_log_flops(frontier):
    curve = [{"flops": 1e10, "sample_bpc": 3.0}, {"flops": 1e12, "sample_bpc": 2.0}]
    assert frontier.flops_to_reach(curve, 2.5) == pytest.approx(1e11)
    assert frontier.flops_to_reach(curve, 3.5) == 1e10  # reached at the first point
    assert frontier.flops_to_reach(curve, 1.9) is None


def run(arch, d, n, seed, bpc, final_flops=1e12):
    curve = [{"step": 1, "tokens": 1, "flops": final_flops / 100, "sample_bpc": bpc + 1.0},
             {"step": 10, "tokens": 10, "flops": final_flops, "sample_bpc": bpc}]
    return {"arch": arch, "d_model": d, "length": n, "seed": seed, "budget": final_flops,
            "val_bpc": bpc, "tokens": 10, "curve": curve}


def test_summary_pairs_seeds_and_turns_step_times_into_seconds_at_equal_flops(frontier):
    raw = {"runs": [run("plain", 128, 256, 0, 2.0), run("hourglass", 128, 256, 0, 1.9),
                    run("plain", 128, 256, 1, 2.1), run("hourglass", 128, 256, 1, 1.9)],
           "timing": {"d128-n256": {"d_model": 128, "length": 256, "plain_s_per_step": 1.0,
                                    "hourglass_s_per_step": 0.6, "plain_flops_per_step": 10.0,
                                    "hourglass_flops_per_step": 5.0}}}
    summary = frontier.summarize(raw)
    first = summary["pairs"][0]
    assert first["difference"] == pytest.approx(-0.1)
    # the hourglass reaches 2.0 a tenth of the way from 2.9 to 1.9 in log FLOPs
    assert first["flop_ratio"] == pytest.approx(10 ** (-2 + 2 * 0.9))
    spread = summary["spreads"][0]
    assert spread["plain_spread"] == pytest.approx(0.1)
    assert spread["hourglass_spread"] == pytest.approx(0.0)
    assert spread["difference_mean"] == pytest.approx(-0.15)
    timing = summary["timing"][0]
    assert timing["step_time_ratio"] == pytest.approx(0.6)
    assert timing["seconds_at_equal_flops"] == pytest.approx(1.2)  # half the FLOPs, 0.6 the time


@pytest.mark.slow
def test_smoke_run_trains_the_grid_resumes_nothing_done_and_derives_its_tables(tmp_path,
                                                                                frontier):
    corpus = tmp_path / "toy.txt"
    words = "the old house stood on a hill where night and mist gathered".split()
    corpus.write_text("\n\n".join(" ".join(words[(i * 7 + j) % len(words)] for j in range(40))
                                  for i in range(200)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT),
                                                        os.environ.get("PYTHONPATH", "")]),
           "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "benchmarks/frontier.py", "--runs", str(tmp_path / "runs"),
               "--smoke", "--corpus-file", str(corpus), "--results", str(tmp_path),
               "--precision", "fp32"]

    def script(*extra):
        result = subprocess.run(command + list(extra), cwd=REPO_ROOT, env=env,
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        return result.stdout

    first = script()
    raw = json.loads((tmp_path / "frontier_smoke.json").read_text())
    assert len(raw["runs"]) == len(frontier.grid(smoke=True))
    for record in raw["runs"]:
        assert record["curve"][-1]["step"] == record["steps"]
        assert [p["flops"] for p in record["curve"]] == sorted(p["flops"] for p in record["curve"])
    assert "sample bpc" in first
    again = script()  # every run is done: nothing trains, the same tables come out
    assert "sample bpc" not in again
    script("--timing")
    raw = json.loads((tmp_path / "frontier_smoke.json").read_text())
    assert set(raw["timing"]) == {"d16-n64", "d32-n64", "d16-n128"}
    assert (tmp_path / "frontier_smoke.md").read_text() == frontier.render_markdown(raw)
    assert raw.pop("summary") == frontier.summarize(raw)


def test_the_committed_frontier_is_what_the_script_derives_and_the_package_holds_it(frontier):
    committed = REPO_ROOT / "benchmarks" / "results" / "frontier.json"
    raw = json.loads(committed.read_text())
    assert (REPO_ROOT / "benchmarks" / "results" / "frontier.md").read_text() == (
        frontier.render_markdown(raw))
    assert frontier.PACKAGE_COPY.read_text() == committed.read_text()  # what notebook 06 reads
    assert raw.pop("summary") == frontier.summarize(raw)
    assert len(raw["runs"]) == len(frontier.grid())


def test_plot_frontier_draws_every_run_in_its_lengths_panel():
    from hourglass_edu.viz import plot_frontier

    raw = {"runs": [run("plain", 64, 256, 0, 2.0), run("hourglass", 64, 256, 0, 1.9),
                    run("plain", 64, 2048, 0, 2.2), run("hourglass", 64, 2048, 1, 2.1),
                    run("hourglass", 128, 2048, 0, 2.0)]}
    axes = plot_frontier(raw).axes
    assert [ax.get_title() for ax in axes] == ["windows of 256 characters",
                                               "windows of 2,048 characters"]
    assert [len(ax.lines) for ax in axes] == [2, 3]
    assert all(ax.get_xscale() == "log" for ax in axes)
