"""The course's prose quotes no measurement of a shipped model as a bare figure.

A shipped model's numbers (its validation bits per character, steps, tokens, minutes, speed,
vocabulary) change when it is retrained, and a learner who sets `TRAIN_YOUR_OWN = True` gets
others: prose that quotes them goes silently wrong. A cell prints them instead, and the markdown
says "the cell above printed ..." or reads them qualitatively. This test looks for every spelling
of every measured field of every shipped model's card in the markdown of every notebook.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hourglass_edu.pretrained import list_pretrained, pretrained_card, pretrained_folder

REPO_ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def figure_spellings(card: dict, vocab_size: int) -> set[str]:
    """How prose would write this card's measurements (rounded as people round them)."""
    spellings = set()
    for field in ("val_bpc", "slice_bpc"):
        if card.get(field) is not None:
            value = float(card[field])
            spellings |= {f"{value:.2f}", f"{value:.3f}", f"{value:.4f}"}
    for field in ("steps", "tokens_per_second"):
        if card.get(field) is not None:
            spellings |= {f"{int(card[field]):,}", str(int(card[field]))}
    if card.get("tokens_seen") is not None:
        tokens = int(card["tokens_seen"])
        spellings |= {f"{tokens:,}", f"{tokens / 1e6:.1f}M", f"{tokens / 1e6:.1f} million"}
    if card.get("training_seconds") is not None:
        seconds = float(card["training_seconds"])
        minutes = round(seconds / 60)
        spellings.add(f"{round(seconds):,} s")
        # A budget the recipe set (`--minutes 20`) is a definition, not a measurement.
        budgets = re.findall(r"--minutes (\d+)", str(card.get("job_command", "")))
        if str(minutes) not in budgets:
            spellings |= {f"{minutes} minutes", f"{minutes} min"}
    spellings |= {f"vocabulary of {vocab_size}", f"{vocab_size} characters",
                  f"{vocab_size} symbols", f"{vocab_size} tokens"}
    return spellings


def find_figures(text: str, spellings: set[str]) -> list[str]:
    """The spellings that stand in `text` as whole numbers (not inside a longer one)."""
    found = []
    for spelling in sorted(spellings):
        pattern = r"(?<![\d.,\-–])" + re.escape(spelling) + r"(?!\d|[.,]\d|(?<=[a-z])[a-z])"
        if re.search(pattern, text):
            found.append(spelling)
    return found


def shipped_spellings() -> dict[str, set[str]]:
    spellings = {}
    for name in list_pretrained():
        config = json.loads((pretrained_folder(name) / "config.json").read_text())
        spellings[name] = figure_spellings(pretrained_card(name), int(config["vocab_size"]))
    return spellings


def markdown_cells(path: Path):
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            yield cell.get("id", "?"), "".join(cell["source"])


def test_the_detector_finds_a_quoted_figure_and_ignores_longer_numbers():
    spellings = figure_spellings({"val_bpc": 1.8443, "steps": 12400, "tokens_seen": 50790400,
                                  "training_seconds": 9809, "job_command": "--minutes 170"},
                                 vocab_size=92)
    assert find_figures("it reaches 1.844 bits per character", spellings) == ["1.844"]
    assert find_figures("after 12,400 steps", spellings) == ["12,400"]
    assert find_figures("a vocabulary of 92 characters", spellings) == [
        "92 characters", "vocabulary of 92"]
    assert find_figures("50.8M characters in 163 minutes", spellings) == ["163 minutes", "50.8M"]
    budget = figure_spellings({"training_seconds": 1201, "job_command": "train --minutes 20"}, 92)
    assert find_figures("trained for 20 minutes", budget) == []
    longer = "112,400 or 1.8445 or 21.844 or 12,4001 or lines 12399-12400"
    assert find_figures(longer, spellings) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_markdown_quotes_no_shipped_model_measurement(path):
    quoted = []
    for name, spellings in shipped_spellings().items():
        for cell_id, text in markdown_cells(path):
            for figure in find_figures(text, spellings):
                quoted.append(f"{cell_id}: {figure!r} ({name}'s card)")
    assert not quoted, (
        f"{path.name} quotes shipped-model measurements in its prose; print them from a cell "
        "and let the prose read them ('the cell above printed ...'):\n" + "\n".join(quoted))
