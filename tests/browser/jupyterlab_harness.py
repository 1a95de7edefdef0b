"""Drive the course the way a learner does: JupyterLab in headless Chromium, through Playwright.

Pieces (the fixtures in conftest.py put them together):

- `find_chromium()`: the browser binary, or None (the tests then skip, or fail under CI=true).
- `JupyterLabServer`: starts `jupyter lab` on 127.0.0.1 (free port, token auth, no browser) in
  its own process group, with settings that keep it quiet and offline, and stops it leaving no
  process behind (its kernels included: jupyter_client starts each kernel in a session of its
  own, so killing the server's process group alone would orphan them).
- `NotebookPage`: one browser page with one notebook open. `run_all()` runs every cell through
  the Run menu, as a learner would, and waits until the kernel is idle with every cell done;
  `problems()` lists what a learner would see go wrong: error outputs, tracebacks on stderr,
  widgets that failed to render, JavaScript errors in the console.

The server and page state are read through `window.jupyterapp` (the server runs with
`--LabApp.expose_app_in_browser`): the notebook model says exactly which cells ran and what they
output, which the rendered DOM only approximates.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
#: Where failed browser tests leave screenshots, console logs and outputs (CI prints it).
ARTIFACT_DIR = REPO_ROOT / "test-artifacts" / "browser"
#: A test's pages, kept on its pytest item so that a failure report can save them.
PAGES_KEY = pytest.StashKey[list]()

INSTALL_HINT = (
    "the browser tests need Chromium and Playwright for Python: "
    "`apt-get install chromium` (Debian/Ubuntu; or set HOURGLASS_EDU_CHROMIUM to a Chromium or "
    "Chrome binary, or run `playwright install chromium`) and `pip install playwright`"
)

#: Chromium flags: headless, no sandbox (CI runs as root), and nothing that reaches the network
#: or a GPU. Playwright gives every launch a fresh temporary profile (--user-data-dir) itself.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]

#: Console messages that are not errors of the course. Each entry: a regex and why it is harmless.
#: Keep this list short; anything else logged at level "error" fails the test.
CONSOLE_ALLOW_LIST: list[tuple[str, str]] = []

#: Requests that leave 127.0.0.1 (the Colab badge image in every notebook's first cell) are
#: answered inside the browser with an empty image, so that the tests behave the same with or
#: without internet (CI has none: the failed download would be a console error). They are listed
#: in the page's console log as "offline".
EXTERNAL_URL = re.compile(r"^(https?|wss?)://(?!127\.0\.0\.1[:/])")
EMPTY_SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>'

#: Text that ipywidgets' JupyterLab renderer puts in place of a widget it could not show.
WIDGET_FAILURE_TEXT = ("Error displaying widget", "Error creating widget", "Error rendering")

#: Settings written to the server's private user-settings folder: no news or update checks (they
#: would reach the internet), and every cell kept in the DOM (JupyterLab otherwise virtualizes
#: long notebooks, and screenshots and DOM queries would miss cells out of view).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary: $HOURGLASS_EDU_CHROMIUM, then the usual names on PATH."""
    override = os.environ.get("HOURGLASS_EDU_CHROMIUM")
    if override:
        return override if Path(override).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- processes -----------------------------------------------------------------------------------


def _process_start_time(pid: int) -> int | None:
    """Start time (ticks since boot) of a living process, else None; tells reused pids apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited; only its exit status is left to collect
        return None
    return int(fields[19])


def descendants(root_pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every living descendant of root_pid (Linux /proc; elsewhere none)."""
    children: dict[int, list[int]] = {}
    if not Path("/proc/self/stat").is_file():
        return []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [root_pid]
    while stack:
        for child in children.get(stack.pop(), []):
            started = _process_start_time(child)
            if started is not None:
                found.append((child, started))
                stack.append(child)
    return found


def alive(processes: list[tuple[int, int]]) -> list[int]:
    """The pids among (pid, start time) pairs that still run the same process."""
    return [pid for pid, started in processes if _process_start_time(pid) == started]


# --- the server ----------------------------------------------------------------------------------


class JupyterLabServer:
    """`jupyter lab` serving `root_dir` on 127.0.0.1 with a random token; use as a context manager.

    `state_dir` receives its private config, runtime, settings and workspaces folders and its log,
    so nothing of the user's own Jupyter setup leaks in and nothing is written outside.
    `env` is the environment of the server and therefore of its kernels.
    """

    def __init__(self, root_dir: Path, state_dir: Path, env: dict[str, str]):
        self.root_dir = Path(root_dir)
        self.state_dir = Path(state_dir)
        self.env = dict(env)
        self.token = secrets.token_hex(24)
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = self.state_dir / "jupyterlab.log"
        self._known_children: list[tuple[int, int]] = []
        self._shutdowns: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> JupyterLabServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _prepare_state(self) -> dict[str, str]:
        for name in ("config", "runtime", "ipython", "settings", "workspaces"):
            (self.state_dir / name).mkdir(parents=True, exist_ok=True)
        for relative, values in LAB_SETTINGS.items():
            path = self.state_dir / "settings" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values), encoding="utf-8")
        env = dict(self.env)
        env.update(
            JUPYTER_CONFIG_DIR=str(self.state_dir / "config"),
            JUPYTER_RUNTIME_DIR=str(self.state_dir / "runtime"),
            IPYTHONDIR=str(self.state_dir / "ipython"),
            JUPYTER_PLATFORM_DIRS="1",
        )
        return env

    #: What the log and the errors call this server.
    name = "jupyter lab"

    def command(self) -> list[str]:
        """The server's command line (self.port and self.token are set by then)."""
        return [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            "--allow-root",
            "--LabApp.expose_app_in_browser=True",
            f"--LabApp.user_settings_dir={self.state_dir / 'settings'}",
            f"--LabApp.workspaces_dir={self.state_dir / 'workspaces'}",
            "--LabApp.news_url=",
            "--ServerApp.terminals_enabled=False",
        ]  # fmt: skip

    def start(self, timeout_s: float = 90) -> None:
        env = self._prepare_state()
        self.port = free_port()
        command = self.command()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child process keeps writing to it
        try:
            # A session of its own: stop() can signal the server and anything it forked at once.
            self.process = subprocess.Popen(
                command, env=env, cwd=self.root_dir, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode} while starting; "
                    f"its log ({self.log_path}):\n{self.log_tail()}"
                )
            try:
                self.api("GET", "/api/status", timeout_s=2)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(
            f"{self.name} did not answer within {timeout_s:.0f} s; its log:\n{self.log_tail()}"
        )

    def log_tail(self, characters: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except OSError:
            return "(no log)"

    def api(self, method: str, path: str, timeout_s: float = 10):
        """Call the server's REST API with the token; returns the decoded JSON (or None)."""
        request = urllib.request.Request(
            self.url + path, method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shutdown_kernels_of(self, notebook_path: str) -> None:
        """End the sessions (and kernels) that belong to a notebook: closing a tab does not.

        Runs in the background (a kernel takes seconds to shut down); stop() waits for it.
        """

        def shut_down() -> None:
            try:
                for session in self.api("GET", "/api/sessions"):
                    if session.get("path") == notebook_path:
                        self.api("DELETE", f"/api/sessions/{session['id']}", timeout_s=30)
            except OSError:  # the server is going away: stop() ends the kernel anyway
                pass

        thread = threading.Thread(target=shut_down, name=f"shutdown {notebook_path}", daemon=True)
        thread.start()
        self._shutdowns.append(thread)

    def remember_children(self) -> None:
        """Record the server's living descendants (kernels): stop() makes sure they end too."""
        if self.process is not None and self.process.poll() is None:
            known = set(self._known_children)
            self._known_children += [p for p in descendants(self.process.pid) if p not in known]

    def stop(self) -> None:
        """Shut down kernels and server; kill whatever is left; raise if anything survives."""
        if self.process is None:
            return
        for thread in self._shutdowns:
            thread.join(timeout=30)
        self.remember_children()
        if self.process.poll() is None:
            try:  # the clean way: the server shuts its kernels down, then itself
                self.api("POST", "/api/shutdown", timeout_s=5)
                self.process.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):  # URLError and timeouts are OSErrors
                pass
        for sig, grace_s in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            if self.process.poll() is None:
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    self.process.wait(timeout=grace_s)
                except subprocess.TimeoutExpired:
                    pass
            for pid in alive(self._known_children):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace_s
            while alive(self._known_children) and time.monotonic() < deadline:
                time.sleep(0.1)
        survivors = alive(self._known_children)
        if self.process.poll() is None:
            survivors.append(self.process.pid)
        self.process = None
        if survivors:
            raise RuntimeError(f"processes started by {self.name} survived SIGKILL: {survivors}")


# --- the page ------------------------------------------------------------------------------------

#: JavaScript that reads the open notebook's state from JupyterLab's models.
NOTEBOOK_STATE_JS = """
() => {
  const app = window.jupyterapp;
  if (!app) return {ready: false, why: 'window.jupyterapp missing'};
  const panel = app.shell.currentWidget;
  if (!panel || !panel.content || !panel.sessionContext) return {ready: false, why: 'no notebook'};
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const cells = [];
  panel.content.widgets.forEach((cell, index) => {
    const model = cell.model;
    if (model.type !== 'code') return;
    const prompt = cell.node.querySelector('.jp-InputPrompt');
    cells.push({
      index,
      source: model.sharedModel.getSource(),
      executionCount: model.executionCount,
      running: (prompt && prompt.textContent.includes('*')) || model.executionState === 'running',
      outputs: model.outputs.toJSON(),
      renderedText: cell.outputArea ? cell.outputArea.node.innerText : '',
    });
  });
  return {
    ready: true,
    path: panel.context.path,
    kernelStatus: kernel ? kernel.status : 'no kernel',
    connectionStatus: kernel ? kernel.connectionStatus : 'no kernel',
    cells,
  };
}
"""


@dataclass
class ConsoleEntry:
    kind: str  # console type ("error", "warning", ...) or "pageerror"
    text: str
    location: str = ""

    def __str__(self) -> str:
        where = f" ({self.location})" if self.location else ""
        return f"[{self.kind}] {self.text}{where}"


@dataclass
class NotebookPage:
    """A browser page showing one notebook, with everything its console said."""

    page: object  # playwright.sync_api.Page
    server: JupyterLabServer
    notebook_path: str
    console: list[ConsoleEntry] = field(default_factory=list)
    run_seconds: float | None = None
    _run_started: float = 0.0

    @classmethod
    def open(cls, context, server: JupyterLabServer, notebook_path: str, timeout_s: float = 90):
        """Open `notebook_path` (relative to the server's root) in a new page of `context`.

        Each page gets a workspace of its own: pages sharing one would fight over the saved layout.
        Returns once the notebook is shown and its kernel is idle.
        """
        page = context.new_page()
        opened = cls(page, server, notebook_path)
        page.on("console", opened._on_console)
        page.on("pageerror", opened._on_page_error)
        page.route(EXTERNAL_URL, opened._answer_offline)
        slug = re.sub(r"[^A-Za-z0-9]+", "-", notebook_path)
        workspace = f"hg-{slug}-{secrets.token_hex(3)}"
        page.goto(
            f"{server.url}/lab/workspaces/{workspace}/tree/{notebook_path}?token={server.token}",
            timeout=timeout_s * 1000,
        )
        opened.wait_for(
            lambda s: s.get("ready") and s["path"] == notebook_path and s["kernelStatus"] == "idle",
            timeout_s, "the notebook to open with an idle kernel",
        )  # fmt: skip
        server.remember_children()
        return opened

    def _answer_offline(self, route) -> None:
        self.console.append(
            ConsoleEntry("offline", f"answered with an empty image: {route.request.url}")
        )
        route.fulfill(status=200, content_type="image/svg+xml", body=EMPTY_SVG)

    def _on_page_error(self, error) -> None:
        self.console.append(
            ConsoleEntry("pageerror", f"{error.name}: {error.message}\n{error.stack or ''}")
        )

    def _on_console(self, message) -> None:
        location = message.location or {}
        where = location.get("url", "")
        if where:
            where += f":{location.get('lineNumber', '')}"
        self.console.append(ConsoleEntry(message.type, message.text, where))

    def state(self) -> dict:
        return self.page.evaluate(NOTEBOOK_STATE_JS)

    def wait_for(self, predicate, timeout_s: float, what: str, poll_s: float = 0.25) -> dict:
        """Poll the notebook state until predicate(state) holds; TimeoutError says what for."""
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.state()
            if predicate(state):
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.notebook_path}: waited {timeout_s:.0f} s for {what}; last state: "
                    + json.dumps(_summary(state))[:2000]
                )
            self.page.wait_for_timeout(poll_s * 1000)

    def start_run_all(self) -> None:
        """Run > Run All Cells, clicked in the menu as a learner would; returns at once."""
        self.page.locator("#jp-MainMenu").get_by_role("menuitem", name="Run", exact=True).click()
        self.page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        self._run_started = time.monotonic()

    def run_finished(self, state: dict) -> bool:
        """Kernel idle and every non-empty code cell ran, or one failed (the rest never run)."""
        if not state.get("ready") or state["kernelStatus"] != "idle":
            return False
        cells = [c for c in state["cells"] if c["source"].strip()]
        if any(c["running"] for c in cells):
            return False
        failed = any(o.get("output_type") == "error" for c in cells for o in c["outputs"])
        return failed or all(c["executionCount"] is not None for c in cells)

    def wait_run_all(self, timeout_s: float = 240) -> dict:
        """Wait for the run start_run_all began (timeout counted from its start); final state."""
        remaining = timeout_s - (time.monotonic() - self._run_started)
        state = self.wait_for(self.run_finished, max(remaining, 1), "all cells to run")
        self.run_seconds = time.monotonic() - self._run_started
        self.server.remember_children()
        return state

    def run_all(self, timeout_s: float = 240) -> dict:
        """Run every cell and wait until all ran (or one failed) and the kernel is idle.

        Returns the final notebook state. Execution stops at the first error (JupyterLab's
        default), so cells after an error never run: `problems()` then reports the error.
        """
        self.start_run_all()
        return self.wait_run_all(timeout_s)

    def problems(self, state: dict | None = None) -> list[str]:
        """What went wrong, in words: error outputs, tracebacks, broken widgets, console errors."""
        state = state or self.state()
        found = []
        for cell in state.get("cells", []):
            label = f"cell {cell['index']}"
            for output in cell["outputs"]:
                kind = output.get("output_type")
                if kind == "error":
                    found.append(f"{label}: {output.get('ename')}: {output.get('evalue')}")
                elif kind == "stream" and output.get("name") == "stderr":
                    text = "".join(output.get("text", ""))
                    if re.search(r"Traceback|Error\b|Exception\b", text):
                        found.append(f"{label}: traceback or error on stderr:\n{text[-1500:]}")
            for failure in WIDGET_FAILURE_TEXT:
                if failure in cell["renderedText"]:
                    shown = cell["renderedText"][:300]
                    found.append(f"{label}: a widget failed to render: {shown}")
        found += [f"console: {entry}" for entry in self.console_errors()]
        return found

    def console_errors(self) -> list[ConsoleEntry]:
        errors = []
        for entry in self.console:
            if entry.kind not in ("error", "pageerror"):
                continue
            if any(re.search(pattern, entry.text) for pattern, _why in CONSOLE_ALLOW_LIST):
                continue
            errors.append(entry)
        return errors

    def save_artifacts(self, folder: Path, stem: str) -> list[Path]:
        """Screenshot, console log and the notebook's outputs as text, for a failed test."""
        folder.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)
        saved = []
        console_path = folder / f"{stem}.console.log"
        console_path.write_text("\n".join(map(str, self.console)) + "\n", encoding="utf-8")
        saved.append(console_path)
        try:
            screenshot = folder / f"{stem}.png"
            self.page.screenshot(path=str(screenshot), timeout=15_000)
            saved.append(screenshot)
            outputs = folder / f"{stem}.outputs.txt"
            outputs.write_text(_outputs_as_text(self.state()), encoding="utf-8")
            saved.append(outputs)
        except Exception as error:  # a crashed page still leaves the console log
            (folder / f"{stem}.artifact-error.txt").write_text(repr(error), encoding="utf-8")
        return saved

    def close(self) -> None:
        try:
            self.page.close()
        finally:
            self.server.shutdown_kernels_of(self.notebook_path)


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def _summary(state: dict) -> dict:
    if not state.get("ready"):
        return state
    return {
        "kernel": state["kernelStatus"],
        "cells": [
            (
                c["index"],
                c["executionCount"],
                c["running"],
                [o["output_type"] for o in c["outputs"]],
            )
            for c in state["cells"]
        ],
    }


def _outputs_as_text(state: dict) -> str:
    if not state.get("ready"):
        return json.dumps(state)
    lines = [f"kernel: {state['kernelStatus']}"]
    for cell in state["cells"]:
        lines.append(f"--- cell {cell['index']} [{cell['executionCount']}]")
        lines.append(cell["source"])
        lines.append(">>> rendered output:")
        lines.append(cell["renderedText"])
        for output in cell["outputs"]:
            if output.get("output_type") == "error":
                lines.append(ANSI_ESCAPE.sub("", "\n".join(output.get("traceback", []))))
    return "\n".join(lines) + "\n"


def attach_page(request, page: NotebookPage) -> None:
    """Let a test's failure report save artifacts of a page some other fixture opened."""
    pages = request.node.stash.setdefault(PAGES_KEY, [])
    if all(known is not page for known in pages):
        pages.append(page)
