"""Papermill sweeps: many runs of the notebook pipeline from one grid, sharing what they can.

``python -m improve_lib sweep --profile demo --grid GUIDANCE_SCALE=0,1,2,4 --seeds 0,1,2`` expands
the grid (every combination of the ``--grid`` values, times every seed) into runs. Each run is an
ordinary run folder, ``<sweep dir>/<run name>/``, named from its settings
(``guidance_scale_2-seed1``), executed by :func:`improve_lib.runs.pipeline.run_pipeline`.

Sharing upstream stages
    Every notebook of a run has a *stage key* (:func:`improve_lib.runs.pipeline.stage_keys`): a hash of
    the notebook's code, the library's code, the values of the parameters that notebook declares and
    the key of the notebook before it. Before a run starts, the sweep looks through the run folders
    of the sweep for the longest chain of finished notebooks whose keys equal this run's, copies the
    files those notebooks wrote (the manifest records which notebook wrote which file) and runs only
    the rest. SEED is a parameter of every notebook and the data (DATASET, DATA_DIR) of the first, so
    runs of another seed or other data never share anything; a change in the library's code changes
    every key, so results computed by older code are never mixed in.

Skip, continue, report
    A run whose notebooks are all done with the current keys is skipped; a failed run is recorded
    and the sweep goes on; ``runs.csv`` and the printed report list every run's status, and the
    command exits non-zero when any run failed. Bad input (a grid key no notebook declares, a value
    of the wrong type, two grid entries giving the same run name) is reported before anything runs.

In parallel, or on a cluster
    ``--jobs N`` runs up to N grid points at a time in processes, ``--executor slurm`` as submitit jobs
    (:mod:`improve_lib.runs.sweep_jobs`); a grid point starts after the earlier ones whose stages it reuses.
Presets in ``params/ablations/<name>.yaml`` hold a sweep's settings (``--preset name``).
"""
from __future__ import annotations

import csv
import hashlib
import itertools
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from improve_lib.core import manifest, parameter_domains
from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import atomic_path, atomic_write_text
from improve_lib.core.notebook_parameters import NOTEBOOK_DIR, declared_parameters, list_notebooks, literal
from improve_lib.core.values import as_number, check_type, read_user_yaml
from improve_lib.runs import sharing, sweep_jobs
from improve_lib.runs.pipeline import StudyRunError, execute_notebook, preflight, run_pipeline, stage_keys
from improve_lib.runs.profiles import PARAMS_DIR, load_profile, read_yaml_mapping, resolve_params

ABLATIONS_DIR = PARAMS_DIR / "ablations"
COMPARE_NOTEBOOK = "08_compare_runs.ipynb"
RESERVED = {"SEED": "give seeds with --seeds", "RUN_DIR": "each run gets its own folder",
            "PROFILE": "give the profile with --profile"}
VARIANT_KEY = "RECIPE"  # the grid axis of a preset's named variants (each sets several keys at once)
PRESET_KEYS = {"description", "profile", "dataset", "data_dir", "grid", "variants", "seeds", "set", "from", "to", "time"}


@dataclass
class SweepSpec:
    """What to sweep: a profile, a grid of parameter values, seeds, fixed overrides, a notebook range."""
    profile: str
    grid: dict[str, list[Any]]
    seeds: list[int] = field(default_factory=lambda: [0])
    dataset: str | None = None
    data_dir: str | None = None
    sets: dict[str, Any] = field(default_factory=dict)
    from_nb: str | None = None
    to_nb: str | None = None
    name: str | None = None
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class SweepRun:
    """One expanded run: its folder name, grid values (``RECIPE``: the variant's name), seed, resolved
    parameters, stage keys, and the overrides the grid point sets (a variant's settings and grid values)."""
    name: str
    point: dict[str, Any]
    seed: int
    params: dict[str, Any]
    keys: dict[str, str]
    sets: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ parsing

def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """``["K=1,3", "ARMS=[prototype],[baseline,prototype]"]`` -> ``{"K": [1, 3], "ARMS": [[...], [...]]}``.

    The values after ``=`` are read as one YAML flow sequence, so lists and quoted strings work."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise StudyInputError(f"--grid {item!r}: expected KEY=v1,v2,...")
        key, text = (s.strip() for s in item.split("=", 1))
        if not key.isupper():
            raise StudyInputError(f"--grid {item!r}: parameter names are UPPER_CASE")
        if key in grid:
            raise StudyInputError(f"--grid names {key} twice")
        try:
            values = read_user_yaml(f"[{text}]")
        except yaml.YAMLError as exc:
            raise StudyInputError(f"--grid {item!r}: cannot read the values ({exc.problem})") from None
        if not values:
            raise StudyInputError(f"--grid {item!r}: no values")
        grid[key] = [as_number(v) for v in values]
    return grid


def parse_seeds(text: str | Sequence[int]) -> list[int]:
    """``"0,1,2"`` (or a list) -> ``[0, 1, 2]``; duplicates and non-integers are errors."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        seeds = [int(str(s).strip()) for s in items if str(s).strip()]
    except ValueError:
        raise StudyInputError(f"--seeds {text!r}: expected integers such as 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise StudyInputError(f"--seeds {text!r}: give one or more distinct integers")
    return seeds


def load_preset(name: str, ablations_dir: Path = ABLATIONS_DIR) -> dict[str, Any]:
    """Read ``params/ablations/<name>.yaml`` (or a path to such a file)."""
    path = Path(name) if Path(name).suffix else ablations_dir / f"{name}.yaml"
    data = read_yaml_mapping(path, "preset", name, "profile, grid, seeds, set, from, to")
    unknown = sorted(set(data) - PRESET_KEYS)
    if unknown:
        raise StudyInputError(f"{path}: unknown key(s) {unknown}; a preset may hold {sorted(PRESET_KEYS)}")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) for v in grid.values()):
        raise StudyInputError(f"{path}: grid must map KEY to a list of values")
    data["grid"] = {k: [_expand_env(v, path, k) for v in vs] for k, vs in grid.items()}
    variants = data.get("variants") or {}
    if not isinstance(variants, dict) or any(not isinstance(v, dict) for v in variants.values()):
        raise StudyInputError(f"{path}: variants must map a name to a mapping of KEY: value")
    data["variants"] = {str(name): dict(v) for name, v in variants.items()}
    data["name"] = path.stem
    return data


def _expand_env(value: Any, path: Path, key: str) -> Any:
    """``${VAR}`` in a preset's string values is taken from the environment (e.g. a weights file)."""
    if not isinstance(value, str) or "${" not in value:
        return value
    missing = [v for v in re.findall(r"\$\{(\w+)\}", value) if not os.environ.get(v)]
    if missing:
        raise StudyInputError(f"{path}: grid value {value!r} of {key} needs the environment variable(s) "
                              f"{missing}; set them (e.g. the path to a local open_clip checkpoint)")
    return os.path.expandvars(value)


def spec_from(preset: dict[str, Any] | None = None, **flags: Any) -> SweepSpec:
    """A :class:`SweepSpec` from a preset, with command-line flags taking precedence (grid keys merge)."""
    preset = preset or {}
    grid = dict(preset.get("grid") or {})
    grid.update(flags.get("grid") or {})
    sets = dict(preset.get("set") or {})
    sets.update(flags.get("sets") or {})
    seeds = flags.get("seeds") if flags.get("seeds") is not None else preset.get("seeds", [0])
    profile = flags.get("profile") or preset.get("profile")
    if not profile:
        raise StudyInputError("sweep: give --profile (or a --preset that names one)")
    variants = dict(preset.get("variants") or {})
    if flags.get("variants"):  # --variants a,b: only these of the preset's variants, in the preset's order
        wanted = [v.strip() for v in str(flags["variants"]).split(",") if v.strip()]
        unknown = [v for v in wanted if v not in variants]
        if unknown:
            raise StudyInputError(f"--variants {unknown} are not variants of the preset; it has {list(variants)}")
        variants = {k: v for k, v in variants.items() if k in wanted}
    # A sweep over seeds alone (no grid) is the study's replication; it must be asked for by --seeds, so
    # that a forgotten --grid is not silently a one-run sweep. Its folder takes more seeds later.
    if not grid and not variants and flags.get("seeds") is None and "seeds" not in preset:
        raise StudyInputError("sweep: give at least one --grid KEY=v1,v2 (or a --preset with a grid or variants), "
                              "or --seeds for a sweep over seeds alone")
    pick = lambda k, pk: flags.get(k) if flags.get(k) is not None else preset.get(pk)  # noqa: E731
    return SweepSpec(profile=profile, grid=grid, seeds=parse_seeds(seeds), dataset=pick("dataset", "dataset"),
                     data_dir=pick("data_dir", "data_dir"), sets=sets,
                     from_nb=_nb_number(pick("from_nb", "from")), to_nb=_nb_number(pick("to_nb", "to")),
                     name=flags.get("name") or preset.get("name"), variants=variants)


def _nb_number(value: Any) -> str | None:
    return None if value is None else str(value).zfill(2)


# ------------------------------------------------------------------------------- grid and names

def selected_notebooks(spec: SweepSpec, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The pipeline notebooks a sweep runs: all of them up to ``--to`` (``--from`` only guards the grid)."""
    books = list_notebooks(None, notebook_dir)
    numbers = [p.name[:2] for p in books]
    for flag, nb in (("--from", spec.from_nb), ("--to", spec.to_nb)):
        if nb is not None and nb not in numbers:
            raise StudyInputError(f"{flag} {nb}: no such notebook; pipeline notebooks are {numbers}")
    if spec.from_nb and spec.to_nb and spec.from_nb > spec.to_nb:
        raise StudyInputError(f"--from {spec.from_nb} comes after --to {spec.to_nb}")
    return [p for p in books if spec.to_nb is None or p.name[:2] <= spec.to_nb]


def check_grid(spec: SweepSpec, books: list[Path], notebook_dir: Path = NOTEBOOK_DIR) -> dict[str, list[Any]]:
    """Validate the grid and ``--set`` keys against the notebooks' parameters cells; returns the grid
    with values coerced to the parameters' types. Raises :class:`StudyInputError` before anything runs."""
    every = list_notebooks(None, notebook_dir)
    declared = {nb.name: declared_parameters(nb) for nb in every}
    chosen = {nb.name for nb in books}
    profile_flat = resolve_params(spec.profile, spec.dataset, spec.data_dir, None, every)  # with per-dataset values

    def refs(key: str) -> list[Any]:
        return [profile_flat.get(key)] + [literal(d[key]) for d in declared.values() if key in d]

    def check_key(key: str, where: str) -> None:
        if key in RESERVED:
            raise StudyInputError(f"{where}: not a grid key ({RESERVED[key]})")
        owners = [name for name, d in declared.items() if key in d]
        if not owners:
            raise StudyInputError(f"{where}: no notebook declares {key} in its parameters cell; "
                                  f"see the notebooks' parameters or `params/{spec.profile}.yaml`")
        if not set(owners) & chosen:
            raise StudyInputError(f"{where}: a parameter of {owners}, which this sweep does not run "
                                  f"(--to {spec.to_nb})")
        early = [o for o in owners if spec.from_nb and o[:2] < spec.from_nb]
        if early:
            raise StudyInputError(f"{where}: a parameter of {early}, before --from {spec.from_nb}; the "
                                  f"sweep would not share those notebooks. Drop --from or start it at {early[0][:2]}")

    out = {}
    for key, values in spec.grid.items():
        check_key(key, f"--grid {key}")
        if not values:
            raise StudyInputError(f"--grid {key}: no values")
        if len(values) != len({_canonical(v) for v in values}):
            raise StudyInputError(f"--grid {key}: a value is given twice in {values}")
        out[key] = [check_type(key, v, refs(key), f"--grid {key}") for v in values]
        if len({_canonical(v) for v in out[key]}) != len(out[key]):
            raise StudyInputError(f"--grid {key}: values {values} name the same setting twice")
    for name, settings in spec.variants.items():
        for key, value in settings.items():
            check_key(key, f"variant {name!r}: {key}")
            if key in out:
                raise StudyInputError(f"variant {name!r}: {key} is also a --grid key")
            settings[key] = check_type(key, value, refs(key), f"variant {name!r}: {key}")
    for key, value in spec.sets.items():
        if key in RESERVED:
            raise StudyInputError(f"--set {key}: not allowed in a sweep ({RESERVED[key]})")
        if key in out:
            raise StudyInputError(f"{key} is both a --grid key and a --set override")
        if not any(key in d for d in declared.values()) and key not in profile_flat:
            raise StudyInputError(f"--set {key}: no notebook declares {key} and profile {spec.profile!r} has no such key")
        spec.sets[key] = check_type(key, value, refs(key), f"--set {key}")
    return out


def _canonical(value: Any) -> str:
    return yaml.safe_dump(float(value) if isinstance(value, int) and not isinstance(value, bool) else value)


def value_label(value: Any) -> str:
    """A short, file-name-safe text for one value: ``0.5``, ``true``, ``prototype+baseline``."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = f"{value:g}"
    elif value is None:
        text = "none"
    elif isinstance(value, (list, tuple)):
        text = "+".join(value_label(v) for v in value) or "empty"
    else:
        text = str(value)
    text = re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_.") or "x"
    if len(text) > 32:  # long values (paths to weights) keep their start and a hash of the whole
        text = f"{text[:24]}~{hashlib.sha256(str(value).encode()).hexdigest()[:6]}"
    return text


def run_name(point: dict[str, Any], seed: int) -> str:
    """``{key}_{value}-...-seed{seed}`` with lower-case keys, in the grid's order."""
    parts = [f"{k.lower()}_{value_label(v)}" for k, v in point.items()]
    return "-".join(parts + [f"seed{seed}"])


def expand(spec: SweepSpec, notebook_dir: Path = NOTEBOOK_DIR) -> list[SweepRun]:
    """Every grid point times every seed, as :class:`SweepRun` (seed-major order). Raises before anything
    runs on an unknown key, a wrong type or two points with the same run name."""
    books = selected_notebooks(spec, notebook_dir)
    grid = spec.grid = check_grid(spec, books, notebook_dir)
    every = list_notebooks(None, notebook_dir)
    axes = ([(VARIANT_KEY, list(spec.variants))] if spec.variants else []) + list(grid.items())
    runs, names = [], {}
    for seed in spec.seeds:
        for values in itertools.product(*(v for _, v in axes)):
            point = dict(zip((k for k, _ in axes), values))
            name = run_name(point, seed)
            if name in names:
                raise StudyInputError(f"grid entries {names[name]} and {point} give the same run name {name!r}; "
                                      f"make the values distinguishable")
            names[name] = point
            overrides = {**spec.variants.get(point.get(VARIANT_KEY), {}),
                         **{k: v for k, v in point.items() if k != VARIANT_KEY}}
            params = resolve_params(spec.profile, spec.dataset, spec.data_dir,
                                    {**spec.sets, **overrides, "SEED": seed}, every)
            runs.append(SweepRun(name, point, seed, params, stage_keys(params, every), overrides))
    return runs


def default_sweep_dir(spec: SweepSpec) -> Path:
    """``runs/sweeps/<preset>`` or ``runs/sweeps/<profile>-<dataset>-<grid keys>``."""
    if spec.name:
        return Path("runs") / "sweeps" / spec.name
    dataset = spec.dataset or load_profile(spec.profile).get("DATASET", "synthetic")
    axes = ([VARIANT_KEY] if spec.variants else []) + list(spec.grid)
    return Path("runs") / "sweeps" / "-".join([spec.profile, dataset] + [k.lower() for k in axes])


# ------------------------------------------------------------------------------------------ running

@dataclass
class RunOutcome:
    """What happened to one run of the sweep."""
    run: SweepRun
    status: str  # done | skipped (complete) | failed | planned
    seconds: float = 0.0  # a skipped run's: the stage times its manifest recorded when it ran
    reused: str = ""
    error: str = ""


def plan(runs: list[SweepRun], sweep_dir: Path, books: list[Path]) -> list[tuple[SweepRun, str, list[str]]]:
    """For each run: ``(run, "complete" | "run", notebooks it would copy)``, assuming the runs before it
    finish; used by ``--dry-run``."""
    out = []
    for i, run in enumerate(runs):
        own = sharing.own_prefix(run, sweep_dir, books)
        if len(own) == len(books):
            out.append((run, "complete", own))
            continue
        # earlier runs of this plan will have finished every notebook with their keys
        planned = [sharing.planned_prefix(r.keys, run.keys, books) for r in runs[:i]]
        out.append((run, "run", max([own, sharing.find_donor(run, sweep_dir, books)[1], *planned], key=len)))
    return out


def estimate_seconds(planned: list[tuple[SweepRun, str, list[str]]], books: list[Path], reference: Path) -> float:
    """Seconds the plan would take, from the per-notebook times of a finished reference run. Notebooks
    04-05 scale with the number of arms, 06 with (arms + 1) x EVAL_SEEDS (it also trains on the real
    images); other parameters are assumed equal to the reference run's."""
    m = manifest.load(reference)
    if not m.get("stages"):
        raise StudyInputError(f"--estimate-from {reference}: not a run folder with a manifest")
    ref_arms = len(m.get("params", {}).get("ARMS") or ["baseline", "prototype"])
    ref_evals = len(m.get("params", {}).get("EVAL_SEEDS") or [0, 1, 2])
    total = 0.0
    for run, status, shared in planned:
        if status == "complete":
            continue
        arms = len(run.params.get("ARMS") or ["baseline", "prototype"])
        evals = len(run.params.get("EVAL_SEEDS") or [0, 1, 2])
        for nb in books:
            if nb.name in shared:
                continue
            sec = m.get("stages", {}).get(nb.name, {}).get("seconds")
            if sec is None:
                raise StudyInputError(f"--estimate-from {reference}: notebook {nb.name} has no recorded time")
            scale = {"04": arms / ref_arms, "05": arms / ref_arms,
                     "06": (arms + 1) * evals / ((ref_arms + 1) * ref_evals)}
            total += sec * scale.get(nb.name[:2], 1.0)
    return total


def _write_runs_csv(sweep_dir: Path, outcomes: list[RunOutcome]) -> Path:
    path = sweep_dir / "runs.csv"
    keys_ = list(outcomes[0].run.point) if outcomes else []
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "seed", *keys_, "status", "seconds", "reused", "error"])
        for o in outcomes:
            w.writerow([o.run.name, o.run.seed, *[yaml.safe_dump(o.run.point[k]).strip().removesuffix("...").strip()
                                                  for k in keys_],
                        o.status, round(o.seconds, 1), o.reused, o.error])
    return path


def run_sweep(spec: SweepSpec, sweep_dir: str | Path | None = None, dry_run: bool = False,
              compare: bool = True, progress: bool = True, estimate_from: str | Path | None = None,
              notebook_dir: Path = NOTEBOOK_DIR, echo=print, jobs: int = 1, executor: str = "processes",
              executor_settings: dict[str, Any] | None = None) -> tuple[Path, list[RunOutcome]]:
    """Expand, then execute every run of the sweep (see the module docstring). Returns the sweep folder
    and one :class:`RunOutcome` per run; the caller decides the exit code from the statuses.

    ``jobs`` > 1 or an ``executor`` other than ``processes`` runs grid points through
    :mod:`improve_lib.runs.sweep_jobs` (several processes, or submitit jobs with ``executor_settings``); each
    waits for the earlier runs whose stages it shares. ``jobs=1`` with ``processes`` runs them in order here."""
    books = selected_notebooks(spec, notebook_dir)
    runs = expand(spec, notebook_dir)
    checked = set()
    for r in runs:  # impossible values and data problems are reported before the first run starts
        parameter_domains.check_domains(r.params, f"{r.name}: ")
        if (r.params["DATASET"], r.params.get("DATA_DIR")) not in checked:
            preflight(r.params)
            checked.add((r.params["DATASET"], r.params.get("DATA_DIR")))
    sweep_dir = Path(sweep_dir or default_sweep_dir(spec)).expanduser().resolve()
    if dry_run:
        return sweep_dir, _dry_run(runs, sweep_dir, books, estimate_from, echo)
    in_order = jobs == 1 and executor == "processes"
    sweep_jobs.check_options(executor, jobs, executor_settings)
    foreign = [f"{r.name} ({_identity_of(sweep_dir / r.name)})" for r in runs
               if _identity_of(sweep_dir / r.name) not in (None, _identity(spec, r))]
    if foreign:
        raise StudyInputError(f"{sweep_dir} holds runs of the same names from another sweep setting: "
                              f"{foreign[:3]}; this sweep is {_identity(spec, runs[0])}. Use another "
                              f"--sweep-dir (or delete those run folders)")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep_dir / "sweep.yaml", yaml.safe_dump({
        "profile": spec.profile, "dataset": runs[0].params["DATASET"], "data_dir": spec.data_dir,
        "grid": {**({VARIANT_KEY: list(spec.variants)} if spec.variants else {}), **spec.grid},
        "variants": spec.variants, "seeds": spec.seeds, "set": spec.sets, "from": spec.from_nb, "to": spec.to_nb,
        "notebooks": [b.name for b in books], "started": datetime.now().astimezone().isoformat(timespec="seconds"),
    }, sort_keys=False))
    outcomes: dict[int, RunOutcome] = {}
    tasks = {}
    for i, run in enumerate(runs):
        label = f"[{i + 1}/{len(runs)}] {run.name}"
        if len(sharing.own_prefix(run, sweep_dir, books)) == len(books):
            stages = manifest.load(sweep_dir / run.name).get("stages", {}).values()
            outcomes[i] = RunOutcome(run, "skipped (complete)", sum(float(st.get("seconds") or 0) for st in stages))
            echo(f"{label}: complete, skipped")
        else:
            tasks[i] = (spec, run, label, sweep_dir, books, notebook_dir, progress and in_order)

    def with_busy(i: int) -> tuple:  # at submission: the runs still being written are no donors
        return (*tasks[i], tuple(runs[k].name for k in tasks if k != i and k not in outcomes))

    def record(i: int, outcome: RunOutcome) -> None:
        outcomes[i] = outcome
        _write_runs_csv(sweep_dir, [outcomes[k] for k in sorted(outcomes)])
        if not in_order:
            echo(f"{tasks[i][2]}: {outcome.status}" + (f" ({outcome.error})" if outcome.error else "")
                 + f", {outcome.seconds / 60:.1f} min")

    if in_order:
        for i, args in tasks.items():
            record(i, execute_run(*args, (), echo=echo))
    else:
        pool = sweep_jobs.make_executor(executor, jobs, sweep_dir / "jobs", executor_settings)
        sweep_jobs.run_all(list(tasks), with_busy, execute_run, _waits(runs, tasks, sweep_dir, books), jobs, pool,
                           on_start=lambda i: echo(f"{tasks[i][2]}: started"), on_done=record,
                           on_error=lambda i, exc: RunOutcome(runs[i], "failed", error=f"{type(exc).__name__}: {exc}"))
    ordered = [outcomes[k] for k in sorted(outcomes)]
    _write_runs_csv(sweep_dir, ordered)
    if compare:
        try:
            render_comparison(sweep_dir, notebook_dir=notebook_dir, progress=progress)
        except StudyRunError as exc:
            ordered.append(RunOutcome(SweepRun(COMPARE_NOTEBOOK, {}, -1, {}, {}), "failed", error=str(exc)))
    return sweep_dir, ordered


def _waits(runs: list[SweepRun], tasks: dict[int, tuple], sweep_dir: Path, books: list[Path]) -> dict[int, list[int]]:
    """Which earlier runs each run of a parallel sweep waits for: those that will lend it more notebooks than
    it can take now from a finished folder (its own, or one that is not another run of this sweep)."""
    available = []
    for i, r in enumerate(runs):
        own = sharing.own_prefix(r, sweep_dir, books)
        lent = sharing.find_donor(r, sweep_dir, books, [runs[k].name for k in tasks if k != i])[1]
        available.append(max(len(own), len(lent)))
    return sweep_jobs.waits_for([r.keys for r in runs], books, available)


def execute_run(spec: SweepSpec, run: SweepRun, label: str, sweep_dir: Path, books: list[Path],
                notebook_dir: Path, progress: bool, busy: Sequence[str] = (), echo=print) -> RunOutcome:
    """Run one grid point: copy the longest chain of finished stages from a donor run (or resume its own),
    then run the rest of its notebooks. ``busy``: runs being written meanwhile, which are no donors. Never
    raises for a failed run: the outcome says ``failed``."""
    run_dir = sweep_dir / run.name
    t0 = time.time()
    own = sharing.own_prefix(run, sweep_dir, books)
    reused = ""
    try:
        donor, shared = sharing.find_donor(run, sweep_dir, books, busy)
        if donor is not None and len(shared) > len(own):
            if run_dir.exists():
                shutil.rmtree(run_dir)  # an unfinished run of this sweep: the donor has more
            sharing.adopt_stages(run_dir, donor, shared)
            reused = f"{shared[0][:2]}-{shared[-1][:2]} from {donor.name}"
        elif own:
            reused = f"{own[0][:2]}-{own[-1][:2]} (own, resumed)"
        echo(f"{label}: " + (f"reuses {reused}" if reused else "runs every notebook"))
        fresh = not run_dir.is_dir() or not any(run_dir.iterdir())  # a run folder this sweep makes now
        m = {**manifest.load(run_dir), **({"written_by": manifest.WRITTEN_BY} if fresh else {})}  # whole skeleton
        m["sweep"] = {"folder": str(sweep_dir), "point": run.point, "seed": run.seed, **_identity(spec, run)}
        manifest.save(run_dir, m)
        run_pipeline(spec.profile, dataset=spec.dataset, data_dir=spec.data_dir, run_dir=run_dir,
                     only=[b.name[:2] for b in books], sets={**spec.sets, **run.sets, "SEED": run.seed},
                     resume=True, force=True, progress=progress, notebook_dir=notebook_dir)
        return RunOutcome(run, "done", time.time() - t0, reused)
    except (StudyInputError, StudyRunError) as exc:
        echo(f"{label}: FAILED: {exc}")
        return RunOutcome(run, "failed", time.time() - t0, reused, str(exc).splitlines()[0])
    except Exception as exc:  # noqa: BLE001 - a sweep goes on past any failed run and reports it
        echo(f"{label}: FAILED: {type(exc).__name__}: {exc}")
        return RunOutcome(run, "failed", time.time() - t0, reused, f"{type(exc).__name__}: {exc}")


def _dry_run(runs: list[SweepRun], sweep_dir: Path, books: list[Path], estimate_from, echo) -> list[RunOutcome]:
    """Print what each run would share and run, and the estimated time; run nothing."""
    planned = plan(runs, sweep_dir, books)
    for run, status, shared in planned:
        what = "complete, skipped" if status == "complete" else (
            f"copies {shared[0][:2]}-{shared[-1][:2]}, runs the rest" if shared else "runs every notebook")
        echo(f"{run.name}: {what}")
    runs_per_nb = {nb.name: sum(1 for _, st, sh in planned if st == "run" and nb.name not in sh) for nb in books}
    echo("notebook executions: " + ", ".join(f"{k[:2]} x{v}" for k, v in runs_per_nb.items()))
    if estimate_from:
        sec = estimate_seconds(planned, books, Path(estimate_from))
        echo(f"estimated time from {estimate_from}: {sec / 60:.0f} min")
    return [RunOutcome(r, "planned", reused=",".join(s)) for r, _, s in planned]


def _identity(spec: SweepSpec, run: SweepRun) -> dict[str, Any]:
    """What makes runs of one sweep comparable besides the grid point and seed."""
    return {"profile": spec.profile, "dataset": run.params["DATASET"], "data_dir": run.params.get("DATA_DIR"),
            "sets": {k: v for k, v in sorted(spec.sets.items())}}


def _identity_of(run_dir: Path) -> dict[str, Any] | None:
    info = manifest.load(run_dir).get("sweep") if run_dir.is_dir() else None
    if not info or "profile" not in info:  # not a sweep run, or one recorded before identities were
        return None
    return {k: info.get(k) for k in ("profile", "dataset", "data_dir", "sets")}


def render_comparison(sweep_dir: str | Path, notebook_dir: Path = NOTEBOOK_DIR, progress: bool = True) -> Path:
    """Execute ``08_compare_runs.ipynb`` on the sweep folder into ``<sweep dir>/08_compare_runs.ipynb``."""
    sweep_dir = Path(sweep_dir).resolve()
    if not sweep_dir.is_dir():
        raise StudyInputError(f"sweep folder {sweep_dir} does not exist")
    return execute_notebook(notebook_dir / COMPARE_NOTEBOOK, sweep_dir / COMPARE_NOTEBOOK,
                            {"SWEEP_DIR": str(sweep_dir)}, progress)


def report(outcomes: list[RunOutcome]) -> str:
    """The end-of-sweep summary: counts, then one line per failed run."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    lines = ["sweep: " + ", ".join(f"{v} {k}" for k, v in counts.items())]
    lines += [f"  FAILED {o.run.name}: {o.error}" for o in outcomes if o.status == "failed"]
    return "\n".join(lines)
