"""Repository hygiene: environment files agree, installed versions are the locked ones, notebooks are committed clean with one parameters cell."""
from __future__ import annotations

import ast
import re
import tomllib
from importlib import metadata
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from improve_lib.core import notebook_parameters
from improve_lib.runs import notebook_tools, profiles

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PROFILES = sorted(p.stem for p in (REPO / "params").glob("*.yaml"))


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(map(_norm, deps)) == sorted(map(_norm, pip_block))
    assert "torch==2.14.1" in deps and "torchvision==0.29.1" in deps


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _installed_closure(root: str = "improve-study", extras: frozenset[str] = frozenset()) -> dict[str, str]:
    """Every distribution the project (with ``extras``) needs on this platform, with its installed version."""
    found, stack = {}, [(root, extras)]
    while stack:
        name, extras = stack.pop()
        dist = metadata.distribution(name)
        found[canonicalize_name(name)] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                if canonicalize_name(req.name) not in found:
                    stack.append((req.name, frozenset(req.extras)))
    found.pop(canonicalize_name(root))
    return found


def test_installed_versions_are_the_locked_ones():
    """make venv installs with -c requirements.lock: every package the project pulls in is pinned there,
    at the version installed, and the lock satisfies pyproject.toml's ranges."""
    lock, installed = _lock(), _installed_closure()
    assert not sorted(set(installed) - set(lock)), "packages installed but not locked (make lock)"
    differ = {k: (v, lock[k]) for k, v in installed.items() if lock[k] != v}
    assert not differ, f"installed vs locked versions differ: {differ}"
    for text in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(text)
        assert req.specifier.contains(lock[canonicalize_name(req.name)], prereleases=True), text


def test_the_extras_make_installs_are_locked():
    """make venv also installs the Makefile's EXTRAS (the trackers whose curves the tests read back), with the same
    constraints: every package they pull in is pinned in requirements.lock, at the version installed."""
    extras = re.search(r"^EXTRAS \?= *(.*)$", (REPO / "Makefile").read_text(), re.M).group(1).split(",")
    optional = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) <= set(optional), f"EXTRAS names extras that pyproject.toml lacks: {set(extras) - set(optional)}"
    try:
        installed = _installed_closure(extras=frozenset(extras))
    except metadata.PackageNotFoundError as exc:
        pytest.skip(f"the extras are not installed here (make venv EXTRAS=...): {exc}")
    lock = _lock()
    assert not sorted(set(installed) - set(lock)), "packages installed but not locked (make lock)"
    differ = {k: (v, lock[k]) for k, v in installed.items() if lock[k] != v}
    assert not differ, f"installed vs locked versions differ: {differ}"


def test_there_are_notebooks_and_profiles():
    assert NOTEBOOKS, "no numbered notebooks found"
    for profile in PROFILES:
        assert profiles.resolve_params(profile)["SEED"] is not None


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
    assert set(notebook_parameters.declared_parameters(path)) == names
    # the ast reader used where papermill is not installed (a bare GPU image) gives papermill's defaults
    assert dict(notebook_parameters._declared_without_papermill(str(path))) == notebook_parameters.declared_parameters(path)


def test_a_parameter_has_one_default():
    """A parameter declared by several notebooks (SEED, RESOLUTION, ARMS, ...) has the same default in each."""
    seen: dict[str, tuple[str, object]] = {}
    for name, defaults in notebook_parameters.all_declared().items():
        for key, value in defaults.items():
            first = seen.setdefault(key, (name, value))
            assert first[1] == value, f"{key}: {first[1]!r} in {first[0]} but {value!r} in {name}"


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_hold_only_differences_from_the_notebook_defaults(profile):
    """One source for every default: a profile names only notebook parameters (a typo would otherwise be
    ignored), and only with values other than the notebooks' defaults (else it would be a second home)."""
    declared: dict[str, object] = {}
    for defaults in notebook_parameters.all_declared().values():
        declared.update(defaults)
    raw = profiles.load_profile(profile)
    per_dataset = raw.pop("datasets", None) or {}
    unknown = sorted(set(raw).union(*[set(v or {}) for v in per_dataset.values()]) - set(declared))
    assert not unknown, f"params/{profile}.yaml: {unknown} are not notebook parameters"
    repeated = sorted(k for k, v in raw.items() if declared[k] == v)
    assert not repeated, f"params/{profile}.yaml repeats the notebook defaults of {repeated}"
    for dataset, values in per_dataset.items():
        same = sorted(k for k, v in (values or {}).items() if raw.get(k, declared[k]) == v)
        assert not same, f"params/{profile}.yaml, datasets.{dataset}: {same} change nothing"


def test_paper_profile_is_table_2():
    """The paper profile, resolved (notebook defaults + profile), is the paper's Table 2 and section 4."""
    for dataset in ("ham10000", "bone_marrow"):
        p = profiles.resolve_params("paper", dataset=dataset)
        assert (p["RESOLUTION"], p["BASE_CHANNELS"], p["CHANNEL_MULT"], p["LAYERS_PER_BLOCK"], p["DROPOUT"]) == \
            (64, 64, [1, 2, 4, 8], 2, 0.1)
        assert (p["LR"], p["BATCH_SIZE"], p["EPOCHS"], p["MAX_STEPS"], p["NUM_TRAIN_TIMESTEPS"]) == \
            (1e-4, 16, 1500, None, 1000)
        assert (p["N_TRAIN"], p["N_TEST"], p["STEPS"], p["N_PER_CLASS"], p["GUIDANCE_SCALE"]) == (100, 50, 50, 100, 1.8)
        assert (p["K"], p["LAMBDA"], p["P_UNCOND"], p["BETA_SCHEDULE"]) == (1, 0.001, 0.1, "linear")  # the paper gives no gamma
        assert p["CLASSIFIER"] == "resnext50_32x4d" and p["CLASS_EMBEDDING_MAP"] == "none"
        assert p["ENCODER"] == "open_clip:ViT-L-14:openai" and p["DATASET"] == dataset


def test_demo_profile_is_the_notebook_defaults():
    """Opened in JupyterLab and run top to bottom, the notebooks do what `make study` does (the demo
    profile, minutes on a laptop CPU), not a paper-scale run."""
    assert profiles.load_profile("demo") == {}
