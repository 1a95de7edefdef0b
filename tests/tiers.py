"""Which collected tests are `slow` beyond those marked in their files: every notebook or browser
test (tests/conftest.py applies this before `-m` selects a tier; CONTRIBUTING.md says what "slow"
means). Every other slow test carries `@pytest.mark.slow` (or its file's `pytestmark`) where it is
written; tests/repository/test_suite_tiers.py checks that each test starting a process does."""

from __future__ import annotations

import pytest

SLOW_MARKERS = ("notebook", "browser")


def mark_slow_tests(items) -> None:
    """Add `slow` to every notebook or browser test."""
    for item in items:
        if any(item.get_closest_marker(m) for m in SLOW_MARKERS):
            item.add_marker(pytest.mark.slow)
