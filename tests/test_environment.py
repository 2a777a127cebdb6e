"""Repository hygiene: environment files agree, notebooks are committed clean with one parameters cell."""
from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

from improve_lib import notebook_tools, pipeline

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(map(_norm, deps)) == sorted(map(_norm, pip_block))
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps


def test_there_are_notebooks_and_profiles():
    assert NOTEBOOKS, "no numbered notebooks found"
    for profile in ("smoke", "demo", "paper"):
        assert pipeline.load_profile(profile)["SEED"] is not None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_committed_clean_with_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs: make strip"
    assert len(notebook_tools.parameter_cells(path)) == 1, f"{path.name} needs exactly one 'parameters' cell"
    params = nb.cells[notebook_tools.parameter_cells(path)[0]].source
    for line in params.splitlines():
        if not line.strip():
            continue
        target = ast.parse(line).body[0]
        assert isinstance(target, ast.Assign), f"{path.name}: parameters cell holds only assignments: {line!r}"
        name = target.targets[0].id
        assert name.isupper(), f"{path.name}: parameter {name} is not UPPER_CASE"
        assert isinstance(target.value, (ast.Constant, ast.List, ast.Dict, ast.UnaryOp)), f"{path.name}: {name} is not a literal"
        assert "#" in line, f"{path.name}: parameter {name} needs a comment with its allowed values"
    lines = sum(len(c.source.splitlines()) for c in code)
    assert lines <= 150, f"{path.name} has {lines} lines of code: move logic into improve_lib"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_sees_every_parameter(path):
    """papermill silently ignores a parameter line it cannot parse (e.g. a quote in the comment)."""
    nb = nbformat.read(path, as_version=4)
    source = nb.cells[notebook_tools.parameter_cells(path)[0]].source
    names = {ast.parse(line).body[0].targets[0].id for line in source.splitlines() if line.strip()}
    assert set(pipeline.declared_parameters(path)) == names


def test_every_profile_key_is_a_notebook_parameter():
    """A typo in a profile would otherwise be ignored silently."""
    declared = set()
    for nb in NOTEBOOKS:
        declared |= set(pipeline.declared_parameters(nb))
    for profile in ("smoke", "demo", "paper"):
        raw = pipeline.load_profile(profile)
        keys = set(raw) - {"datasets"}
        for per_dataset in (raw.get("datasets") or {}).values():
            keys |= set(per_dataset or {})
        assert not keys - declared, f"params/{profile}.yaml: {sorted(keys - declared)} are not notebook parameters"


def test_paper_profile_is_table_2():
    p = pipeline.load_profile("paper")
    assert (p["RESOLUTION"], p["BASE_CHANNELS"], p["CHANNEL_MULT"], p["LAYERS_PER_BLOCK"], p["DROPOUT"]) == \
        (64, 64, [1, 2, 4, 8], 2, 0.1)
    assert (p["LR"], p["BATCH_SIZE"], p["EPOCHS"], p["N_TRAIN"], p["N_TEST"], p["STEPS"], p["N_PER_CLASS"]) == \
        (1e-4, 16, 1500, 100, 50, 50, 100)
    assert p["CLASSIFIER"] == "resnext50_32x4d" and p["CLASS_EMBEDDING_MAP"] == "none"


def test_notebook_defaults_are_the_demo_profile():
    """Opened in JupyterLab and run top to bottom, the notebooks do what `make study` does (the demo
    profile, minutes on a laptop CPU), not a paper-scale run."""
    import ast

    from improve_lib import pipeline

    demo = pipeline.load_profile("demo")
    for nb in pipeline.list_notebooks():
        for key, default in pipeline.declared_parameters(nb).items():
            if key in demo:
                assert ast.literal_eval(default) == demo[key], f"{nb.name}: {key} = {default}, demo.yaml: {demo[key]}"
