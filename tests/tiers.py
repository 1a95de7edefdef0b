"""Which collected tests are `slow` beyond those marked in their files (tests/conftest.py applies
this before `-m` selects a tier; CONTRIBUTING.md says what "slow" means)."""

from __future__ import annotations

from pathlib import Path

import pytest

SLOW_MARKERS = ("notebook", "browser")
ALL_TESTS = "*"

#: file -> names of its test functions (or ALL_TESTS) that are slow. These files belonged to other
#: work when the tiers came in; move each mark into its file as `@pytest.mark.slow` when the file
#: is next edited. tests/repository/test_suite_tiers.py fails on a name here that no longer exists.
SLOW_ELSEWHERE: dict[str, set[str] | str] = {
    "test_bad_inputs.py": ALL_TESTS,  # the command line in subprocesses, Ctrl-C, SIGTERM
    "test_cli.py": {"test_module_entry_point_help"},  # a subprocess
    "test_cli_train.py": ALL_TESTS,  # trains on the real corpora
    "test_distributed.py": ALL_TESTS,  # torchrun
    "test_pretrained.py": {"test_poem_models_end_their_poems_by_themselves",
                           "test_validation_slice_scores_what_the_card_says"},
    "test_related_models.py": {"test_cached_and_recomputed_greedy_generation_are_identical"},
    "test_train.py": {"test_training_lowers_validation_bpc_and_records_history"},
}


def listed_as_slow(item) -> bool:
    listed = SLOW_ELSEWHERE.get(Path(str(item.fspath)).name)
    name = getattr(item, "originalname", None) or item.name
    return listed is not None and (listed == ALL_TESTS or name in listed)


def mark_slow_tests(items) -> None:
    """Add `slow` to every notebook or browser test and to every test SLOW_ELSEWHERE lists."""
    for item in items:
        if any(item.get_closest_marker(m) for m in SLOW_MARKERS) or listed_as_slow(item):
            item.add_marker(pytest.mark.slow)

