"""Notebook 11, the capstone: the learner writes the pieces; the stubs hold no answers.

The committed notebook holds stubs (cells tagged `stub`) and a check after each (cells tagged
`check`); its `solutions` cell holds the worked pieces, which `tools/fill_solutions.py` puts in
place of the stubs. These tests keep the two forms honest:

* every stub only raises `NotImplementedError("fill in NAME above")` (read from its syntax tree);
* run in order, the stubs make the first check report "not written yet: fill in my_rotary above"
  and no check pass; the solutions make every check pass;
* each check catches a deliberate mistake in a solution, at the stage that should see it;
* the slow tests run both forms end to end in a kernel (smoke profile): the stubbed one to its end
  with every check reporting, the solved one with every check passing.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import os
from pathlib import Path

import pytest
import torch

nbformat = pytest.importorskip("nbformat")

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "notebooks" / "11_capstone_your_own_hourglass.ipynb"
_spec = importlib.util.spec_from_file_location("fill_solutions",
                                               REPO_ROOT / "tools" / "fill_solutions.py")
fill_solutions = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fill_solutions)
FIRST_FAILURE = "✗ my_rotary: not written yet: fill in my_rotary above"


def stubbed():
    return nbformat.read(NOTEBOOK, as_version=4)


def tagged(notebook, tag):
    return [cell for cell in notebook.cells if tag in cell.metadata.get("tags", [])]


def _set_up(notebook, namespace: dict) -> None:
    """Run the notebook's settings and imports cells into `namespace`."""
    setup = [cell for cell in notebook.cells if cell.cell_type == "code"][1:3]  # settings, imports
    for cell in setup:
        code = "\n".join(line for line in cell.source.splitlines() if not line.startswith("%"))
        exec(compile(code, f"setup:{cell.id}", "exec"), namespace)


def run_in_order(notebook) -> list[str]:
    """Run the setup cells, then every stub and check cell in notebook order, in this process;
    return what each check cell printed. (The kernel tests run the whole notebook.)"""
    namespace: dict = {}
    threads = torch.get_num_threads()
    outputs = []
    try:
        _set_up(notebook, namespace)
        for cell in notebook.cells:
            tags = cell.metadata.get("tags", [])
            if "stub" in tags or "check" in tags:
                printed = io.StringIO()
                with contextlib.redirect_stdout(printed):
                    exec(compile(cell.source, f"notebook:{cell.id}", "exec"), namespace)
                if "check" in tags:
                    outputs.append(printed.getvalue())
    finally:
        torch.set_num_threads(threads)
    return outputs


# ---- the stubs ---------------------------------------------------------------------------------


def _only_raises(function: ast.FunctionDef, name: str) -> bool:
    body = list(function.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]                                    # the docstring
    if body and ast.unparse(body[0]).startswith("super().__init__("):
        body = body[1:]
    return len(body) == 1 and ast.unparse(body[0]) == (
        f"raise NotImplementedError('fill in {name} above')")


def test_every_stub_only_raises_not_implemented_with_its_name():
    stubs = tagged(stubbed(), "stub")
    assert len(stubs) == 11
    for cell in stubs:
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.FunctionDef):
                assert _only_raises(node, node.name), f"stub {node.name} holds more than a raise"
            elif isinstance(node, ast.ClassDef):
                methods = [item for item in node.body if isinstance(item, ast.FunctionDef)]
                assert methods, f"stub class {node.name} has no methods"
                for method in methods:
                    assert _only_raises(method, node.name), (
                        f"stub {node.name}.{method.name} holds more than a raise")


def test_every_stub_cell_is_followed_by_its_check():
    cells = stubbed().cells
    for index, cell in enumerate(cells):
        if "stub" in cell.metadata.get("tags", []):
            assert "check" in cells[index + 1].metadata.get("tags", []), (
                f"stub {cell.id} is not followed by a check cell")


@pytest.mark.slow
def test_stubs_fail_the_first_check_with_a_message_and_pass_none():
    outputs = run_in_order(stubbed())
    assert outputs[0].startswith(FIRST_FAILURE), outputs[0]
    for output in outputs:
        assert "✓" not in output, f"a check passed on a stub: {output}"
        assert output.count("not written yet: fill in") == output.count("✗") > 0, output


@pytest.mark.slow
def test_solutions_pass_every_check():
    outputs = run_in_order(fill_solutions.solved(stubbed()))
    assert len(outputs) == 11
    for output in outputs:
        assert "✗" not in output and "✓" in output, output


# ---- the checks catch mistakes -----------------------------------------------------------------

MISTAKES = {
    # solution number, text in the solution, its replacement, what the failing check says
    "rotary pairs neighbours, not halves": (
        1, "first, second = x.float().chunk(2, dim=-1)",
        "first, second = x.float()[..., 0::2], x.float()[..., 1::2]",
        "✗ my_rotary, equal to RotaryEmbedding"),
    "rotary frequencies without the 2 of 2i / d": (
        1, "rotary_inverse_frequencies(x.shape[-1])",
        "10000.0 ** (-torch.arange(x.shape[-1] // 2) / x.shape[-1])",
        "✗ my_rotary, equal to RotaryEmbedding"),
    "attention not causal": (2, "is_causal=True", "is_causal=False", "✗ Attention, causality"),
    "keys and values swapped": (2, "k, v = self.kv(x).chunk(2, dim=-1)",
                                "v, k = self.kv(x).chunk(2, dim=-1)",
                                "✗ Attention, equal to MultiHeadAttention"),
    "post-norm block": (3, "x = x + self.attn(self.norm1(x))", "x = self.norm1(x + self.attn(x))",
                        "✗ Block, equal to TransformerBlock"),
    "shift by k, not k - 1": (4, "(0, 0, k - 1, 0))[:, : x.shape[1]]",
                              "(0, 0, k, 0))[:, : x.shape[1]]", "✗ pad_and_shift, equal"),
    "no shift at all": (4, "return F.pad(x, (0, 0, k - 1, 0))[:, : x.shape[1]]", "return x",
                        "✗ mean_shorten, causality"),
    "upsampling forgets the residual": (4, "return residual + repeat(",
                                        "return 0 * residual + repeat(",
                                        "✗ repeat_upsample, equal"),
    "level ignores its shift flag": (
        5, "        if self.shift:\n            shifted = pad_and_shift(x, self.k)\n        else:",
        "        if True:\n            shifted = pad_and_shift(x, self.k)\n        else:",
        "✗ Level, shift = False leaks"),
    "level drops its post blocks": (
        5, "for block in self.post:\n            x = block(x)\n        ", "",
        "✗ Level, equal to HourglassLevel"),
    "head with a bias": (6, "self.head = nn.Linear(d_model, vocab_size, bias=False)",
                  "self.head = nn.Linear(d_model, vocab_size, bias=True)",
                  "✗ MyHourglass, equal to HourglassLM"),
    "shortening mask sees one group too far": (
        9, "return full_index < (short_index + 1) * k", "return full_index < (short_index + 2) * k",
        "✗ shortening_mask, no key from the future"),
    "shortening mask hides the groups before its own": (
        9, "return full_index < (short_index + 1) * k",
        "return (full_index < (short_index + 1) * k) & (full_index >= short_index * k)",
        "✗ shortening_mask, equal to funnel_down_mask"),
    "funnel up keys at the wrong positions": (
        10, "full_index, short_index * k, mask)", "full_index, short_index, mask)",
        "✗ FunnelUp, equal to AttentionUpsampling"),
}
#: Leaks of exactly one step: changing input s moves output s - 1 and no earlier one. The
#: causality stage must reject them itself (issue 35: comparing only the outputs before s - 1
#: let them through to the equality stage, which blamed the wrong thing).
ONE_STEP_LEAKS = {
    "the k=2 level left unshifted": (
        5, "        if self.shift:\n", "        if self.shift and self.k != 2:\n",
        "✗ Level, causality: changing input 1 moved output 0 by"),
    "attention sees one key ahead": (
        2, "is_causal=True",
        "attn_mask=torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).tril(1)",
        "✗ Attention, causality: changing input 1 moved output 0 by"),
}
#: A training loop that forgets a step, and the fix its check must name.
LOOP_MISTAKES = {
    "loop without zero_grad": (
        7, "        optimizer.zero_grad()", "        pass",
        "✗ training_loop, runs 20 steps: gradients pile up from one step to the next: clear "
        "them in every step (optimizer.zero_grad())"),
    "loop without the update": (
        7, "        optimizer.step()", "        pass",
        "✗ training_loop, runs 20 steps: the weights never changed: call optimizer.step()"),
    "loop that does nothing": (
        7, "    for _ in range(steps):", "    for _ in range(0):",
        "✗ training_loop, runs 20 steps: your loop took 0 batches for 20 steps: call "
        "next_batch() once in every step"),
    "loop that returns bits": (
        7, "losses.append(loss.item())", "losses.append(loss.item() / math.log(2))",
        "✗ training_loop, returns each step's loss: the losses are in bits; return them in nats"),
}
MISTAKES.update(ONE_STEP_LEAKS)
MISTAKES.update(LOOP_MISTAKES)


def _with_mistake(notebook, mistake):
    """`notebook` with solution `number`'s `old` replaced by `new` (the mistake)."""
    number, old, new, _ = mistake
    solutions_cell = next(cell for cell in notebook.cells if cell.get("id") == "solutions")
    code = fill_solutions.solutions(notebook)[number - 1][2]
    assert old in code, f"solution {number} no longer holds {old!r}: update the test"
    solutions_cell.source = solutions_cell.source.replace(code, code.replace(old, new, 1))
    return notebook


@pytest.mark.slow
@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_each_check_catches_a_mistake(mistake):
    expected = MISTAKES[mistake][3]
    notebook = fill_solutions.solved(_with_mistake(stubbed(), MISTAKES[mistake]))
    printed = "".join(run_in_order(notebook))
    assert expected in printed, printed


def _check_one_piece(mistake, check: str) -> str:
    """Only the solutions up to the mistaken one, then one check: what it printed (fast)."""
    notebook = _with_mistake(stubbed(), mistake)
    namespace: dict = {}
    threads = torch.get_num_threads()
    printed = io.StringIO()
    try:
        _set_up(notebook, namespace)
        for _, _, code in fill_solutions.solutions(notebook)[:mistake[0]]:
            exec(code, namespace)
        with contextlib.redirect_stdout(printed):
            exec(check, namespace)
    finally:
        torch.set_num_threads(threads)
    return printed.getvalue()


@pytest.mark.parametrize("mistake", sorted(ONE_STEP_LEAKS))
def test_the_causality_stage_rejects_a_one_step_leak(mistake):
    check = {5: "check_level(Level)", 2: "check_attention(Attention)"}[ONE_STEP_LEAKS[mistake][0]]
    printed = _check_one_piece(ONE_STEP_LEAKS[mistake], check)
    assert ONE_STEP_LEAKS[mistake][3] in printed, printed
    assert "(a leak of exactly one step)" in printed, printed
    assert "equal to" not in printed, "the causality stage, not the equality stage, must stop it"


def test_the_causality_stage_changes_inputs_of_both_parities():
    """A leak within the pairs (1, 2), (3, 4), ...: output 2j-1 reads input 2j. Only a change of an
    even input shows it; a check that changes odd positions only passes it."""
    from hourglass_edu.capstone_stages import CheckFailed, _expect_causal

    def reads_the_next_input_at_odd_positions(x):
        ahead = torch.zeros_like(x)
        ahead[:, 1:-1:2] = x[:, 2::2][:, : ahead[:, 1:-1:2].shape[1]]
        return x + ahead

    for length in (11, 101):
        with pytest.raises(CheckFailed, match="a leak of exactly one step"):
            _expect_causal(reads_the_next_input_at_odd_positions, torch.randn(1, length, 4),
                           lambda s: s, "")


@pytest.mark.parametrize("mistake", sorted(LOOP_MISTAKES))
def test_the_loop_check_names_the_likely_fix(mistake):
    printed = _check_one_piece(LOOP_MISTAKES[mistake], "check_training_loop(training_loop)")
    assert LOOP_MISTAKES[mistake][3] in printed, printed
    assert "✓ training_loop, the loss falls" not in printed, printed


def test_the_loop_check_passes_the_solution_and_its_loss_falls():
    printed = _check_one_piece((7, "", "", ""), "check_training_loop(training_loop)")
    assert printed.count("✓ training_loop") == 3 and "✗" not in printed, printed
    before, after = map(float, printed.split("unseen windows ")[1].split(" nats")[0].split(" -> "))
    assert after < before - 0.5, "the check's 20 steps should lower the loss clearly, not by luck"


def test_the_mask_check_draws_where_the_masks_differ(capsys):
    from hourglass_edu.capstone_checks import check_shortening_mask

    def one_group_too_far(short_length, full_length, k):
        return torch.arange(full_length)[None, :] < (torch.arange(short_length)[:, None] + 2) * k

    assert check_shortening_mask(one_group_too_far) is False
    printed = capsys.readouterr().out
    assert "✗ shortening_mask, no key from the future: k=2" in printed, printed
    assert "\n    ■■■■++······\n" in printed, printed         # short query 0 of 6, 12 keys


# ---- filling the solutions in ------------------------------------------------------------------


def test_the_solutions_cell_is_numbered_and_matches_the_stubs():
    notebook = stubbed()
    found = fill_solutions.solutions(notebook)
    assert [number for number, _, _ in found] == list(range(1, len(found) + 1))
    solved = fill_solutions.solved(notebook)
    assert not any("NotImplementedError" in cell.source for cell in tagged(solved, "stub"))
    assert len(solved.cells) == len(notebook.cells) + len(found) - len(tagged(notebook, "stub"))


def test_a_solution_that_defines_other_names_is_refused():
    notebook = stubbed()
    solutions_cell = next(cell for cell in notebook.cells if cell.get("id") == "solutions")
    solutions_cell.source = solutions_cell.source.replace("def my_rotary(", "def rotate(", 1)
    with pytest.raises(ValueError, match="stub cell 1 defines"):
        fill_solutions.solved(notebook)


# ---- both forms, end to end in a kernel --------------------------------------------------------


def execute(notebook, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("HOURGLASS_EDU_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO_ROOT),
                                                      os.environ.get("PYTHONPATH", "")]))
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    return {cell.id: "".join(output.get("text", "") for output in cell.get("outputs", []))
            for cell in notebook.cells if cell.cell_type == "code"}


@pytest.mark.slow
@pytest.mark.notebook
def test_the_stubbed_notebook_runs_to_its_end_and_fails_its_first_check(tmp_path, monkeypatch):
    notebook = stubbed()
    printed = execute(notebook, tmp_path, monkeypatch)
    checks = [printed[cell.id] for cell in tagged(notebook, "check")]
    assert checks[0].startswith(FIRST_FAILURE), checks[0]
    assert not any("✓" in output for output in checks), "a check passed on a stub"
    waiting = [text for text in printed.values() if "waiting: this cell needs your" in text]
    assert len(waiting) >= 6, "the cells that need the model should wait, with a message"


@pytest.mark.slow
@pytest.mark.notebook
def test_the_solved_notebook_passes_every_check(tmp_path, monkeypatch):
    notebook = fill_solutions.solved(stubbed())
    printed = execute(notebook, tmp_path, monkeypatch)
    checks = [printed[cell.id] for cell in tagged(notebook, "check")]
    assert all("✓" in output and "✗" not in output for output in checks), checks
    assert not any("waiting:" in text for text in printed.values())
    assert "your hourglass == HourglassLM" in "".join(printed.values())
    assert "".join(printed.values()).count("correct:") == 3       # the three exercises
    figures = [output for cell in notebook.cells for output in cell.get("outputs", [])
               if "image/png" in output.get("data", {})]
    assert len(figures) == 4, "flow, training curve, dependency matrices, attention map"


# ---- a check reports, it never raises ----------------------------------------------------------


def test_a_check_reports_an_error_in_the_learners_code_in_one_line(capsys):
    from hourglass_edu.capstone_checks import check_rotary

    def broken_rotary(x, positions):
        return x @ torch.ones(3)                   # a shape error, as a learner might write

    assert check_rotary(broken_rotary) is False
    printed = capsys.readouterr().out
    assert printed.startswith("✗ my_rotary, shape: RuntimeError:"), printed
    assert "return x @ torch.ones(3)" in printed and printed.count("\n") == 1


def test_a_check_names_the_wrong_shape(capsys):
    from hourglass_edu.capstone_checks import check_rotary

    assert check_rotary(lambda x, positions: x[..., :4]) is False
    assert "returned shape (2, 3, 7, 4), expected (2, 3, 7, 8)" in capsys.readouterr().out


def test_a_check_names_the_weights_that_do_not_fit(capsys):
    from hourglass_edu.capstone_checks import check_block

    solutions = fill_solutions.solutions(stubbed())
    namespace = {"torch": torch}
    exec("import torch.nn.functional as F\nfrom torch import nn\n"
         "from einops import rearrange\n"
         "from hourglass_edu.blocks import rotary_inverse_frequencies", namespace)
    for _, _, code in solutions[:3]:                # rotary, attention, block
        exec(code.replace("self.norm2", "self.ff_norm"), namespace)
    assert check_block(namespace["Block"]) is False
    printed = capsys.readouterr().out
    assert ("the library's ['norm2.bias', 'norm2.weight'] have no place in yours; yours has "
            "['ff_norm.bias', 'ff_norm.weight'], which the library does not") in printed, printed


def test_a_check_points_at_the_learners_line_not_inside_einops(capsys):
    from einops import rearrange

    from hourglass_edu.capstone_checks import check_mean_shorten

    def mean_shorten(shifted, k):
        return rearrange(shifted, "b (m k) d -> b m d", k=k)   # rearrange cannot reduce

    assert check_mean_shorten(mean_shorten, lambda x, k: x[:, : x.shape[1] // k * k]) is False
    assert 'return rearrange(shifted, "b (m k) d -> b m d", k=k)' in capsys.readouterr().out
