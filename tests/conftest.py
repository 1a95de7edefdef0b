"""Shared test fixtures, and the two test tiers.

Tiers: plain `pytest` runs the fast tier (pyproject's addopts hold `-m "not slow"`);
`pytest -m "slow or not slow"` runs the complete suite. A test is `slow` when it takes more than
about 2 s or starts a subprocess, a notebook, torchrun, pip or a browser: mark it with
`@pytest.mark.slow` in its file. Every `notebook` or `browser` test is slow without saying so
(tests/tiers.py; see CONTRIBUTING.md).

Fixtures: `toy_corpus` / `toy_data` (a tiny corpus of haiku-like documents, split and tokenized),
`make_tiny_hourglass` (a tiny random HourglassLM), all three from tests/tiny.py, the one tiny model
and toy corpus of the suite; `small_disk` (a 4 MiB tmpfs), `shipped_copy`, `rewrite_config`; and
`corpus_dir` for tests that need the real corpora. `corpus_dir` finds them through
HOURGLASS_EDU_DATA or at ../shared/data beside the repository; when neither exists it skips with a
reason, except under CI=true, where a missing corpus is a failure (CI must never silently skip).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import tiny
import torch
from hypothesis import Phase, settings
from tiers import mark_slow_tests

from hourglass_edu.data.corpora import Corpus

REPO_ROOT = Path(__file__).resolve().parents[1]

settings.register_profile("default", deadline=None, print_blob=True)
# For checking that the tests catch a deliberate bug (CONTRIBUTING.md): report the first failing
# example at once instead of shrinking it, which can take minutes on a broken model.
settings.register_profile("no-shrink", parent=settings.get_profile("default"),
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile(os.environ.get("HOURGLASS_EDU_HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Every test model is tiny, so per-operation overhead dominates: one thread is fastest, and
    far faster than two threads fighting over busy cores (10x measured on a 2-core machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def find_corpus_dir() -> Path | None:
    candidates = []
    if os.environ.get("HOURGLASS_EDU_DATA"):
        candidates.append(Path(os.environ["HOURGLASS_EDU_DATA"]))
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for candidate in candidates:
        if (candidate / "haiku" / "haiku.txt").is_file() and (candidate / "lovecraft").is_dir():
            return candidate.resolve()
    return None


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    found = find_corpus_dir()
    if found is None:
        message = (
            "real corpora not found: set HOURGLASS_EDU_DATA to a directory holding "
            "haiku/haiku.txt and lovecraft/*.txt (for example ../shared/data)"
        )
        if running_in_ci():
            pytest.fail(message + " -- CI=true, so this is a failure, not a skip")
        pytest.skip(message)
    return found


# --- the tiny model and the toy corpus (tests/tiny.py) ------------------------------------------


@pytest.fixture(scope="session")
def toy_corpus() -> Corpus:
    """120 toy poems: enough for a tiny model to learn something in a few steps, in no time."""
    return tiny.toy_corpus()


@pytest.fixture(scope="session")
def toy_data():
    """`toy_corpus` split (10% validation, seed 0) and tokenized; `.tokenizer`, `.train_ids`..."""
    return tiny.toy_data()


@pytest.fixture(scope="session")
def make_tiny_hourglass():
    """The `tiny_hourglass(vocab_size=11, *, seed=0, **changes)` factory."""
    return tiny.tiny_hourglass


# --- the tiers ----------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_configure(config):
    # The autograd engine sizes its per-device worker queues at the first backward pass of the
    # process, so the simulated accelerator must exist before any test runs one (registered
    # later, its first backward fails an internal assert). Registering it changes nothing for
    # code that never names "sim".
    import simulated_device

    simulated_device.install()
    see_the_cpu_as_its_kernels_are_capped()


#: torch's kernel levels below AVX-512: a CPU (or a run capped with ATEN_CPU_CAPABILITY, as
#: .ci/run's second fast-tier run is) that computes with these has no AVX512-BF16 and no AMX.
CAPPED_CAPABILITIES = ("DEFAULT", "NO AVX", "AVX2")


def see_the_cpu_as_its_kernels_are_capped() -> None:
    """Under capped kernels, torch's probes for AVX512-BF16 and AMX answer as the capped CPU would.

    Those probes read the hardware (cpuinfo), not ATEN_CPU_CAPABILITY, so without this a capped
    run on an AVX512-BF16 machine would still have `precision="auto"` pick bf16, and the fast
    tier would never run the fp32 path that an AVX2-only CPU takes."""
    if torch.backends.cpu.get_cpu_capability() in CAPPED_CAPABILITIES:
        torch.cpu._is_avx512_bf16_supported = lambda: False
        torch.cpu._is_amx_tile_supported = lambda: False


def pytest_collection_modifyitems(config, items):
    mark_slow_tests(items)


@pytest.fixture
def shipped_copy(tmp_path) -> Path:
    """A copy of the shipped `haiku` model folder, to damage."""
    from hourglass_edu.pretrained import PRETRAINED_DIR

    return Path(shutil.copytree(PRETRAINED_DIR / "haiku", tmp_path / "haiku"))


@pytest.fixture
def rewrite_config():
    """`rewrite_config(folder, **changes)`: change fields of a model folder's config.json."""
    def rewrite(folder: Path, **changes) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return rewrite


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs root and mount); skipped where the platform does not allow it."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                            capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.decode().strip()})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)
