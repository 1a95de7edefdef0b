"""pyproject.toml's lower bounds are true: they admit what Colab ships, and torch's is the oldest
release that has every torch API the library, the notebooks and the tools use.

Colab. requirements/colab.txt holds the versions of Colab's GPU runtime (written from
github.com/googlecolab/backend-info by tools/refresh_colab_pins.py, which names the commit). A
notebook's first cell runs `%pip install "hourglass_edu @ git+..."` inside a running Colab
kernel; a bound that Colab's version misses makes pip upgrade that package under the kernel (it
did: `ipywidgets>=8` replaced Colab's 7.7.1). The tests below check every requirement against
the file; the Colab-stack tier (.ci/colab-stack, tests/repository/test_colab_stack.py) checks
the same install with pip's resolver in a virtualenv that holds the pins.

torch. No torch older than the one installed can be tried here (PyPI's Linux torch wheels are
CUDA builds of several GB), so the bound rests on a table: every `torch.*` name the code uses
(found by parsing it), dated by the release that introduced it. A name missing from the table
fails the test until someone dates it; the newest date must be the bound. The scan sees names
reached from torch's modules, not methods of tensors, modules and optimizers (the newest of those
used, `untyped_storage` and the optimizer's `register_step_post_hook`, came in 2.0).
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import pytest
from colab_pins import colab, refresh
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parents[2]


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def project_requirements() -> list[Requirement]:
    return [Requirement(text) for text in pyproject()["project"]["dependencies"]]


#: Requirements that Colab's runtime lacks, so that the install cell adds them (none today).
ADDED_ON_COLAB: set[str] = set()


# --- Colab's pins ---------------------------------------------------------------------------------


def test_the_pins_name_their_backend_info_commit_and_python():
    pins = colab()
    assert re.fullmatch(r"[0-9a-f]{40}", pins.commit)
    assert re.fullmatch(r"3\.\d+\.\d+", pins.python)
    assert pins.version("ipywidgets") and pins.version("torch")


def test_the_pins_file_is_what_the_refresh_tool_writes():
    text = refresh.OUTPUT.read_text(encoding="utf-8")
    assert refresh.render(refresh.parse_pins(text)) == text, (
        "requirements/colab.txt was edited by hand: rewrite it with tools/refresh_colab_pins.py")


def test_colabs_python_satisfies_requires_python():
    requires = pyproject()["project"]["requires-python"]
    assert Version(colab().python) in Requirement(f"python{requires}").specifier


def test_colabs_pinned_versions_satisfy_every_requirement_of_the_library():
    pins = colab()
    environment = {"python_version": ".".join(pins.python.split(".")[:2]),
                   "python_full_version": pins.python, "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64"}  # fmt: skip
    missed, missing = [], []
    for requirement in project_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        version = pins.version(requirement.name)
        if version is None:
            if requirement.name not in ADDED_ON_COLAB:
                missing.append(requirement.name)
        elif not requirement.specifier.contains(Version(version), prereleases=True):
            missed.append(f"{requirement} (Colab: {version})")
    assert not missed, ("pyproject.toml's bounds would make Colab's install cell replace what "
                        f"Colab ships: {missed}; lower them (and keep the code working there)")
    assert not missing, (f"Colab's runtime lacks {missing}: the install cell would add them; "
                         "if that is meant, list them in ADDED_ON_COLAB")


def test_the_bounds_check_catches_a_bound_colab_misses(monkeypatch):
    """The check above, given the bound the course had before (ipywidgets>=8), fails."""
    old = [Requirement("ipywidgets>=8") if r.name == "ipywidgets" else r
           for r in project_requirements()]
    monkeypatch.setattr(sys.modules[__name__], "project_requirements", lambda: old)
    with pytest.raises(AssertionError, match=r"ipywidgets>=8 \(Colab: 7\.7\.1\)"):
        test_colabs_pinned_versions_satisfy_every_requirement_of_the_library()


# --- the refresh tool -----------------------------------------------------------------------------

FREEZE = """# a comment, as Colab's file has
ipywidgets==7.7.1
google-colab @ file:///colabtools/dist/google_colab-1.0.0.tar.gz
torch==2.11.0+cu128
"""
COMMIT = "a" * 40


def test_refresh_tool_leaves_out_editable_installs_as_it_does_url_installs():
    pins, left_out = refresh.parse_freeze(
        "-e git+https://github.com/x/course@abc#egg=course\n-e /src/local\n" + FREEZE, "f")
    assert left_out == ["course", "/src/local", "google-colab"]
    assert set(pins) == {"ipywidgets", "torch"}


def test_refresh_tool_writes_a_freezes_pins_under_a_header_naming_the_commit(tmp_path, capsys):
    freeze, output = tmp_path / "freeze.txt", tmp_path / "colab.txt"
    freeze.write_text(FREEZE)
    arguments = ["--freeze", str(freeze), "--commit", COMMIT, "--date", "2026-08-19",
                 "--python", "3.13.15", "--output", str(output)]  # fmt: skip
    assert refresh.main(arguments) == 0
    written = refresh.parse_pins(output.read_text())
    assert written.pins == {"ipywidgets": "7.7.1", "torch": "2.11.0+cu128"}
    assert (written.commit, written.date, written.python) == (COMMIT, "2026-08-19", "3.13.15")
    assert written.left_out == ["google-colab"]
    assert refresh.main([*arguments, "--check"]) == 0
    output.write_text(output.read_text().replace("7.7.1", "8.1.5"))
    assert refresh.main([*arguments, "--check"]) == 1
    assert "is not Colab's list" in capsys.readouterr().err


@pytest.mark.parametrize("text, complaint", [
    ("ipywidgets>=7\ntorch==2.11.0\n", "line 1: 'ipywidgets>=7' is neither name==version"),
    ("numpy==2.1.3\n", "pins no torch"),
    ("torch==2.11.0\nipywidgets==7.7.1\ntorch==2.12.0\n", "line 3: torch is pinned again"),
    ("typing_extensions==4.1\ntorch==2.11.0\nipywidgets==7.7.1\ntyping-extensions==4.2\n",
     "line 4: typing-extensions is pinned again (first on line 1)"),
])  # fmt: skip
def test_refresh_tool_refuses_a_file_that_is_not_colabs_freeze(tmp_path, capsys, text, complaint):
    freeze, output = tmp_path / "freeze.txt", tmp_path / "colab.txt"
    freeze.write_text(text)
    output.write_text("kept\n")
    status = refresh.main(["--freeze", str(freeze), "--commit", COMMIT, "--date", "2026-08-19",
                           "--python", "3.13.15", "--output", str(output)])  # fmt: skip
    error = capsys.readouterr().err
    assert status == 2 and complaint in error and str(freeze) in error
    assert len(error.strip().splitlines()) == 1
    assert output.read_text() == "kept\n", "a refused refresh must leave the old file alone"


@pytest.mark.parametrize("option, value, complaint", [
    ("--commit", "a724079", "name the backend-info commit"),
    ("--date", "Aug 19", "YYYY-MM-DD"),
    ("--python", "3.13", "X.Y.Z"),
])  # fmt: skip
def test_refresh_tool_from_a_file_needs_the_commit_date_and_python(tmp_path, capsys, option,
                                                                  value, complaint):
    freeze = tmp_path / "freeze.txt"
    freeze.write_text(FREEZE)
    given = {"--commit": COMMIT, "--date": "2026-08-19", "--python": "3.13.15", option: value}
    arguments = ["--freeze", str(freeze), "--output", str(tmp_path / "out.txt")]
    for name, setting in given.items():
        arguments += [name, setting]
    assert refresh.main(arguments) == 2
    error = capsys.readouterr().err
    assert option in error and complaint in error
    assert not (tmp_path / "out.txt").exists()


@pytest.mark.slow  # git in subprocesses
def test_refresh_tool_reads_a_backend_info_clone_at_a_commit(tmp_path):
    import subprocess

    mirror = tmp_path / "backend-info"
    git = ["git", "-C", str(mirror), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "--quiet", str(mirror)], check=True)
    (mirror / refresh.FREEZE_FILE).write_text(FREEZE)
    (mirror / refresh.OS_INFO_FILE).write_text("# generated\nUbuntu 22.04.5 LTS\nPython 3.13.15\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "--quiet", "-m", "first"], check=True)
    first = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                           check=True).stdout.strip()  # fmt: skip
    (mirror / refresh.FREEZE_FILE).write_text(FREEZE.replace("7.7.1", "8.1.5"))
    subprocess.run([*git, "commit", "--quiet", "-am", "second"], check=True)
    assert refresh.from_mirror(mirror).version("ipywidgets") == "8.1.5"
    older = refresh.from_mirror(mirror, first[:7])
    assert older.commit == first and older.python == "3.13.15"
    assert older.version("ipywidgets") == "7.7.1"
    with pytest.raises(refresh.PinsError, match="--mirror .*git show"):
        refresh.from_mirror(mirror, "no-such-commit")


# --- torch: the lower bound is the newest API used ------------------------------------------------

#: The torch names the library, the notebooks and the tools use that came after torch 2.0, with
#: the release that introduced each and where that shows.
TORCH_APIS_AFTER_2_0 = {
    "torch.compiler.is_compiling": (
        "2.3", "listed in pytorch.org/docs/2.3/_sources/torch.compiler_api.rst.txt, absent from "
        "the 2.1 and 2.2 lists; torch_geometric gates it on WITH_PT23"),
    "torch.amp.GradScaler": (
        "2.3", "pytorch.org/docs/2.3/_modules/torch/cuda/amp/grad_scaler.html: "
        "torch.cuda.amp.GradScaler became a subclass of the new device-generic torch.amp one"),
    "torch.utils.flop_counter.FlopCounterMode": (
        "2.1", "added by pytorch/pytorch#95751 (March 2023), after the 2.0 branch"),
}
#: Newer names the code reaches only through getattr with a fallback (so any torch >= the bound
#: works): not counted for the bound. Listed so that a reader sees them.
TORCH_APIS_GUARDED = {
    "torch.OutOfMemoryError": "2.5 (training/stopping.py falls back to torch.cuda's)",
    "torch.serialization.get_unsafe_globals_in_checkpoint": "2.5 (training/checkpoints.py: "
                                                            "older torch skips the check)",
    "torch.cpu._is_amx_tile_supported": "private probe (training/precision.py: getattr)",
}
#: Every other torch name the code uses: each was in torch 2.0 (most since 1.x; the newest of
#: them: scaled_dot_product_attention, torch.compile and TorchDispatchMode arrived in 2.0,
#: saved_tensors_hooks in 1.10, set_float32_matmul_precision in 1.12, torch.cuda.OutOfMemoryError
#: in 1.13, the optimizer's register_step_post_hook in 2.0).
TORCH_APIS_IN_2_0 = {
    "torch.int8", "torch.int16", "torch.int32", "torch.int64", "torch.uint8", "torch.strided",
    "torch.isnan", "torch.isposinf", "torch.optim.Optimizer", "torch.cuda.get_device_properties",
    "torch.backends.mps.is_available", "torch._C",
    "torch.Generator", "torch.Tensor", "torch.__file__", "torch.__version__",
    "torch.__version__.split", "torch.all", "torch.allclose", "torch.any", "torch.arange",
    "torch.argsort", "torch.as_tensor", "torch.autocast", "torch.autograd.grad",
    "torch.autograd.graph.saved_tensors_hooks",
    "torch.bfloat16", "torch.bincount", "torch.bool", "torch.cat", "torch.compile",
    "torch.cpu", "torch.cuda.OutOfMemoryError", "torch.cuda.current_device",
    "torch.cuda.device_count", "torch.cuda.empty_cache", "torch.cuda.get_device_capability",
    "torch.cuda.get_device_name", "torch.cuda.get_rng_state", "torch.cuda.is_available",
    "torch.cuda.max_memory_allocated", "torch.cuda.reset_peak_memory_stats",
    "torch.cuda.set_device", "torch.cuda.set_rng_state", "torch.cuda.synchronize",
    "torch.cumsum", "torch.device", "torch.distributed.ReduceOp.MAX",
    "torch.distributed.ReduceOp.SUM", "torch.distributed.all_gather_object",
    "torch.distributed.all_reduce", "torch.distributed.barrier",
    "torch.distributed.destroy_process_group", "torch.distributed.get_backend",
    "torch.distributed.get_rank", "torch.distributed.get_world_size",
    "torch.distributed.init_process_group", "torch.distributed.is_available",
    "torch.distributed.is_initialized", "torch.div",
    "torch.einsum", "torch.empty", "torch.enable_grad", "torch.equal", "torch.eye",
    "torch.float16", "torch.float32", "torch.float64", "torch.from_numpy",
    "torch.get_float32_matmul_precision", "torch.get_num_threads", "torch.get_rng_state",
    "torch.isfinite", "torch.isinf", "torch.linalg.solve", "torch.linalg.svd", "torch.load",
    "torch.log10", "torch.log2", "torch.log_softmax", "torch.long", "torch.manual_seed",
    "torch.minimum", "torch.nn", "torch.nn.Conv1d", "torch.nn.Dropout",
    "torch.nn.Embedding", "torch.nn.GELU", "torch.nn.LayerNorm", "torch.nn.Linear",
    "torch.nn.Module", "torch.nn.ModuleList", "torch.nn.Parameter", "torch.nn.SiLU",
    "torch.nn.functional.conv1d", "torch.nn.functional.cosine_similarity",
    "torch.nn.functional.cross_entropy", "torch.nn.functional.dropout",
    "torch.nn.functional.gelu", "torch.nn.functional.one_hot", "torch.nn.functional.pad",
    "torch.nn.functional.scaled_dot_product_attention", "torch.nn.init.normal_",
    "torch.nn.init.zeros_", "torch.nn.parallel.DistributedDataParallel",
    "torch.nn.utils.clip_grad_norm_",
    "torch.no_grad", "torch.nonzero", "torch.ones", "torch.ones_like", "torch.optim.AdamW",
    "torch.promote_types", "torch.randint", "torch.randn", "torch.random.fork_rng",
    "torch.random.get_rng_state", "torch.random.set_rng_state", "torch.save",
    "torch.serialization", "torch.set_float32_matmul_precision", "torch.set_num_threads",
    "torch.set_rng_state", "torch.sign", "torch.softmax", "torch.sort", "torch.stack",
    "torch.tensor", "torch.testing.assert_close", "torch.topk", "torch.tril", "torch.triu",
    "torch.utils._python_dispatch.TorchDispatchMode", "torch.where", "torch.zeros",
    "torch.zeros_like",
}


def torch_names(source: str) -> set[str]:
    """The dotted `torch...` names a piece of Python uses: attribute chains rooted at a name bound
    to torch or one of its modules (`import torch`, `from torch import nn`, `import
    torch.nn.functional as F`), and names imported from torch. Only the longest chain counts."""
    tree = ast.parse(source)
    bound: dict[str, str] = {}
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "torch" or alias.name.startswith("torch."):
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        bound["torch"] = "torch"
                        names.add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and (
                node.module == "torch" or node.module.startswith("torch.")):
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                names.add(f"{node.module}.{alias.name}")
    chains: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in bound:
                chains.add(".".join([bound[inner.id], *reversed(parts)]))
    longest = {c for c in chains if not any(o.startswith(c + ".") for o in chains)}
    return names | longest


def code_sources() -> dict[str, str]:
    """Every Python source a learner runs: the library, the notebooks' code cells, the tools and
    the benchmarks (IPython magics turned into calls)."""
    from IPython.core.inputtransformer2 import TransformerManager

    sources = {}
    for folder in ("hourglass_edu", "tools", "benchmarks"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            sources[str(path.relative_to(REPO_ROOT))] = path.read_text(encoding="utf-8")
    transform = TransformerManager().transform_cell
    for path in sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        # one source per notebook: a cell uses the names earlier cells imported
        sources[path.name] = "\n".join(transform("".join(cell["source"])) for cell in cells
                                       if cell["cell_type"] == "code")
    return sources


def torch_names_used() -> dict[str, list[str]]:
    used: dict[str, list[str]] = {}
    for where, source in code_sources().items():
        for name in torch_names(source):
            used.setdefault(name, []).append(where)
    return used


def test_the_scan_finds_torch_names_through_every_kind_of_import():
    source = """
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
x = torch.cuda.is_available() and F.scaled_dot_product_attention(q, k, v)
layer = nn.Linear(2, 2)
torch.compiler.is_compiling()
"""
    assert torch_names(source) == {
        "torch", "torch.nn", "torch.utils.flop_counter.FlopCounterMode",
        "torch.cuda.is_available", "torch.nn.functional.scaled_dot_product_attention",
        "torch.nn.Linear", "torch.compiler.is_compiling"}


def test_every_torch_name_the_code_uses_is_dated():
    known = {"torch", *TORCH_APIS_AFTER_2_0, *TORCH_APIS_IN_2_0}
    undated = {name: places[:3] for name, places in torch_names_used().items()
               if name not in known}
    assert not undated, (
        "torch names used but not dated in TORCH_APIS_AFTER_2_0 / TORCH_APIS_IN_2_0 (find the "
        f"release that introduced each, and raise pyproject's torch bound if needed): {undated}")


def test_every_dated_torch_name_is_still_used():
    stale = {*TORCH_APIS_AFTER_2_0, *TORCH_APIS_IN_2_0} - set(torch_names_used())
    assert not stale, f"dated torch names the code no longer uses: {sorted(stale)}; drop them"


def torch_lower_bound() -> Version:
    (requirement,) = [r for r in project_requirements() if r.name == "torch"]
    (specifier,) = [s for s in requirement.specifier if s.operator == ">="]
    return Version(specifier.version)


def test_the_torch_bound_is_the_release_of_the_newest_torch_api_used():
    used = torch_names_used()
    dated = {name: Version(version) for name, (version, _why) in TORCH_APIS_AFTER_2_0.items()
             if name in used}
    assert set(dated) == set(TORCH_APIS_AFTER_2_0), (
        f"dated but no longer used: {set(TORCH_APIS_AFTER_2_0) - set(dated)}: drop them")
    newest = max(dated.values())
    assert torch_lower_bound() == newest, (
        f"pyproject.toml says torch>={torch_lower_bound()}, but the newest torch API the code "
        f"uses came in {newest}: {[n for n, v in dated.items() if v == newest]}")
