"""Fixtures for the browser tests: one JupyterLab server and one headless Chromium per session.

Without Chromium or Playwright the tests skip with a message saying how to install them, except
under CI=true, where that is a failure: CI must run them. When a browser test fails, the
screenshot, console log and outputs of each page it used are saved under test-artifacts/browser/
(the report names the folder), next to the server's log.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from jupyterlab_harness import (
    ARTIFACT_DIR,
    CHROMIUM_ARGS,
    INSTALL_HINT,
    NOTEBOOK_DIR,
    PAGES_KEY,
    REPO_ROOT,
    JupyterLabServer,
    NotebookPage,
    descendants,
    find_chromium,
)


def _running_in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _unavailable(reason: str):
    if _running_in_ci():
        pytest.fail(f"{reason} -- CI=true, so the browser tests must run: {INSTALL_HINT}")
    pytest.skip(f"{reason}: {INSTALL_HINT}")


@pytest.fixture(scope="session")
def artifact_dir() -> Path:
    """test-artifacts/browser/, emptied once per session so that it only holds this run's files."""
    shutil.rmtree(ARTIFACT_DIR, ignore_errors=True)
    ARTIFACT_DIR.mkdir(parents=True)
    return ARTIFACT_DIR


@pytest.fixture(scope="session")
def lab_root(tmp_path_factory) -> Path:
    """The server's root: copies of the course notebooks (the repository is never touched)."""
    root = tmp_path_factory.mktemp("lab-root")
    for notebook in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")):
        shutil.copy2(notebook, root / notebook.name)
    return root


BROWSER_PROCESS = re.compile(r"chrom|jupyter|ipykernel|playwright|node")


def _stray_processes() -> list[str]:
    strays = []
    for pid, _started in descendants(os.getpid()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if BROWSER_PROCESS.search(command):
            strays.append(f"{pid}: {command[:200]}")
    return strays


@pytest.fixture(scope="session")
def no_stray_processes():
    """Torn down last: fails if a browser, server or kernel process outlived its fixture."""
    yield
    deadline = time.monotonic() + 10
    while _stray_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    strays = _stray_processes()
    assert not strays, "browser tests left processes behind:\n" + "\n".join(strays)


@pytest.fixture(scope="session")
def chromium(no_stray_processes):
    """A headless Chromium driven by Playwright (skips, or fails under CI, without one)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed")
    playwright = sync_playwright().start()
    try:
        executable = find_chromium()
        if executable is None and Path(playwright.chromium.executable_path).is_file():
            executable = playwright.chromium.executable_path  # from `playwright install chromium`
        if executable is None:
            _unavailable("no Chromium found")
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


@pytest.fixture(scope="session")
def lab_server(chromium, lab_root, artifact_dir, tmp_path_factory):
    """JupyterLab on 127.0.0.1 serving lab_root; kernels run the course in smoke mode.

    Depends on `chromium` so that a machine without a browser skips before starting a server.
    """
    env = dict(os.environ)
    env["HOURGLASS_EDU_SMOKE"] = "1"
    # Kernels import the package from this checkout even when it is not installed.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    # The kernel must draw figures inline as in a learner's JupyterLab; CI's MPLBACKEND=Agg
    # would turn every plt.show() into a warning and no picture.
    env.pop("MPLBACKEND", None)
    server = JupyterLabServer(lab_root, tmp_path_factory.mktemp("lab-state"), env)
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            if server.log_path.exists():
                shutil.copy2(server.log_path, artifact_dir / "jupyterlab.log")


@pytest.fixture(scope="session")
def browser_context(chromium):
    context = chromium.new_context(viewport={"width": 1400, "height": 1000})
    yield context
    context.close()


@pytest.fixture
def open_notebook(request, browser_context, lab_server):
    """open_notebook(path) -> NotebookPage; pages it opened are closed (kernels shut down) after."""
    pages: list[NotebookPage] = request.node.stash.setdefault(PAGES_KEY, [])

    def opener(notebook_path: str) -> NotebookPage:
        page = NotebookPage.open(browser_context, lab_server, notebook_path)
        pages.append(page)
        return page

    yield opener
    for page in pages:
        page.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, save every page the test used, while the pages are still open."""
    report = yield
    pages = item.stash.get(PAGES_KEY, [])
    if report.failed and pages and report.when in ("setup", "call"):
        saved = []
        for number, page in enumerate(pages):
            saved += page.save_artifacts(ARTIFACT_DIR, f"{item.name}-{number}")
        listing = "\n".join(f"  {path}" for path in saved)
        report.sections.append(
            ("browser artifacts", f"screenshots and console logs in {ARTIFACT_DIR}:\n{listing}")
        )
        print(f"\nbrowser test artifacts: {ARTIFACT_DIR}")
    return report
