"""The classic Notebook 6 front end (Colab's stack: notebook 6.5.7, ipywidgets 7.7.1, its
widgetsnbextension) in headless Chromium: the JupyterLab harness, with another server and page.

- `ClassicNotebookServer`: `python -m notebook` (the classic `NotebookApp`) on 127.0.0.1 with a
  random token, started, checked and stopped as `JupyterLabServer` does (its kernels included).
- `ClassicNotebookPage`: one page at `/notebooks/PATH`. Its state is read from the page's
  `Jupyter.notebook` (cells, their prompts and outputs), the kernel's status from the kernel
  indicator a learner sees; `start_run_all()` clicks Cell > Run All. `problems()` is
  `NotebookPage`'s: error outputs, tracebacks on stderr, widgets that failed to render, console
  errors.

Widgets in Notebook 6 come from widgetsnbextension, which pip installs into the virtualenv's
share/jupyter/nbextensions and enables in its etc/jupyter: the server finds them there, with
the user's own Jupyter folders kept out as in JupyterLabServer.
"""

from __future__ import annotations

import re
import sys
import time

from jupyterlab_harness import (
    CONSOLE_ALLOW_LIST,
    EXTERNAL_URL,
    JupyterLabServer,
    NotebookPage,
)

#: Console messages of Notebook 6 itself that are no fault of the course: a regex (matched
#: against the message and its location) and why.
CLASSIC_CONSOLE_ALLOW_LIST: list[tuple[str, str]] = [
    (r"^Access to font at 'about:blank' from origin 'http://127\.0\.0\.1:\d+' has been blocked "
     r"by CORS policy", "MathJax 2 (Notebook 6's math) declares a MathJax_Blank font at "
     "about:blank to detect font loading; Chromium refuses that fetch, and the math still shows"),
    (r"^Failed to load resource: net::ERR_FAILED \(about:blank:0\)$", "the same font request"),
]

CLASSIC_STATE_JS = """
() => {
  const jupyter = window.Jupyter;
  const notebook = jupyter && jupyter.notebook;
  if (!notebook || !notebook._fully_loaded) return {ready: false, why: 'notebook not loaded'};
  const kernel = notebook.kernel;
  const icon = document.getElementById('kernel_indicator_icon');
  let kernelStatus = 'no kernel';
  if (kernel && icon) {
    if (!kernel.is_connected()) kernelStatus = 'disconnected';
    else if (icon.classList.contains('kernel_idle_icon')) kernelStatus = 'idle';
    else if (icon.classList.contains('kernel_busy_icon')) kernelStatus = 'busy';
    else kernelStatus = icon.className || 'unknown';
  }
  const cells = [];
  notebook.get_cells().forEach((cell, index) => {
    if (cell.cell_type !== 'code') return;
    const prompt = cell.input_prompt_number;
    cells.push({
      index,
      source: cell.get_text(),
      executionCount: typeof prompt === 'number' ? prompt : null,
      running: prompt === '*',
      outputs: JSON.parse(JSON.stringify(cell.output_area.outputs)),
      renderedText: cell.output_area.element[0].innerText,
    });
  });
  return {ready: true, path: notebook.notebook_path, kernelStatus,
          connectionStatus: kernel && kernel.is_connected() ? 'connected' : 'disconnected',
          cells};
}
"""


class ClassicNotebookServer(JupyterLabServer):
    """`python -m notebook` (Notebook 6's NotebookApp) serving `root_dir` on 127.0.0.1."""

    name = "jupyter notebook (classic)"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "notebook",
            "--no-browser",
            "--NotebookApp.ip=127.0.0.1",
            f"--NotebookApp.port={self.port}",
            "--NotebookApp.port_retries=0",
            f"--NotebookApp.token={self.token}",
            f"--NotebookApp.notebook_dir={self.root_dir}",
            "--NotebookApp.terminals_enabled=False",
            "--allow-root",
        ]  # fmt: skip


class ClassicNotebookPage(NotebookPage):
    """A page of the classic Notebook showing one notebook."""

    @classmethod
    def open(cls, context, server: ClassicNotebookServer, notebook_path: str,
             timeout_s: float = 90):  # fmt: skip
        page = context.new_page()
        opened = cls(page, server, notebook_path)
        page.on("console", opened._on_console)
        page.on("pageerror", opened._on_page_error)
        page.route(EXTERNAL_URL, opened._answer_offline)
        page.goto(f"{server.url}/notebooks/{notebook_path}?token={server.token}",
                  timeout=timeout_s * 1000)  # fmt: skip
        opened.wait_for(
            lambda s: s.get("ready") and s["path"] == notebook_path and s["kernelStatus"] == "idle",
            timeout_s, "the notebook to open with an idle kernel",
        )  # fmt: skip
        server.remember_children()
        return opened

    def state(self) -> dict:
        return self.page.evaluate(CLASSIC_STATE_JS)

    def start_run_all(self) -> None:
        """Cell > Run All, clicked in the menu bar as a learner would; returns at once."""
        self.page.locator("#menus").get_by_role("link", name="Cell", exact=True).click()
        self.page.locator("#run_all_cells > a").click()
        self._run_started = time.monotonic()

    def console_errors(self):
        def allowed(entry) -> bool:
            where = f"{entry.text} ({entry.location})" if entry.location else entry.text
            return (any(re.search(pattern, entry.text) for pattern, _ in CONSOLE_ALLOW_LIST)
                    or any(re.search(pattern, where) for pattern, _ in CLASSIC_CONSOLE_ALLOW_LIST))

        return [entry for entry in self.console
                if entry.kind in ("error", "pageerror") and not allowed(entry)]
