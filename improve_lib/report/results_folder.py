"""Commit the results, not the runs: a sweep folder condensed into ``results/<name>/`` for the repository.

A reader checks a claim from these files without rerunning anything: the comparison of notebook 08
(table, verdict, figure, summary), ``runs.csv``, and per run its ``metrics.json`` (TSTR, fidelity, tone,
copy check), the tables of TSTR, fidelity and objective plausibility, ``prototypes_metrics.json``, ``manifest.json`` (git commit, package versions, parameters,
input and output hashes, notebook times), ``params.yaml``, and the sample grids of notebook 05. No
checkpoint and no image of a dataset is copied. ``COMMAND.md`` holds the command that made the sweep.
For the paper's datasets ``SUMMARY.md`` puts the numbers over seeds in the layout of the paper's Tables
3-6, the paper's beside them (:func:`summary_markdown`, written from the copied files only); a sweep over a
grid (a screening) gets none, its runs differ in settings and notebook 08's table compares them.

:func:`verify` is the check a test runs on every committed folder: every run has its files, and every
copied output still hashes to what its run's manifest recorded (so no number was edited by hand).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import yaml

from improve_lib.core import folders, manifest, run_layout
from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import atomic_path, atomic_write_text, sha256_file
from improve_lib.metrics import paper_tables
from improve_lib.report import registered_checks, verdict
from improve_lib.report.comparison import MIN_SEEDS_FOR_A_CLAIM, seed_claim, t_interval

# per run: (file in the run folder, name in the results folder); outputs the manifest hashed
RUN_FILES = (("metrics/metrics.json", "metrics.json"), ("prototypes/metrics.json", "prototypes_metrics.json"),
             ("params.yaml", "params.yaml"))
# per run, when the run has them: the tables behind the per-seed numbers (TSTR, fidelity, objective plausibility)
RUN_TABLES = (("tables/tstr.csv", "tstr.csv"), ("tables/fidelity.csv", "fidelity.csv"),
              ("tables/objective_plausibility.csv", "objective_plausibility.csv"),
              ("tables/tstr_per_class_f1.csv", "tstr_per_class_f1.csv"), ("tables/copy_check.csv", "copy_check.csv"),
              ("tables/morphometry_calibration.csv", "morphometry_calibration.csv"), ("tables/probe.csv", "probe.csv"))
RUN_FIGURES = ("figures/01_image_grid.png", "figures/05_samples_prototype.png", "figures/05_samples_baseline.png",
               "figures/05_tone_prototype.png", "figures/05_tone_baseline.png")
SWEEP_FILES = ("runs.csv", "sweep.yaml", "comparison/table.md", "comparison/summary.csv", "comparison/verdict.md",
               "comparison/comparison.png")
# a check sweep's own files: its runs are what the registered checks read (a comparison of them says nothing)
CHECKS, CHECK_FILES = "checks", ("runs.csv", "sweep.yaml")


def write_results(sweep_dir: str | Path, out_dir: str | Path, command: str, checks: Sequence[str | Path] = ()) -> Path:
    """Copy a finished sweep's evidence into ``out_dir`` (created, or replaced when this tool wrote all of it;
    refused, before any copying, when it holds other files).
    Only the sweep's runs (``runs.csv``) that reached notebook 06 are taken; ``command`` is written to ``COMMAND.md``.
    ``checks``: sweeps of the registration's check runs (a second training seed on a replicate's split, another
    training precision: :mod:`improve_lib.report.registered_checks`), copied the same way under
    ``checks/<sweep folder name>/``. Returns ``out_dir``."""
    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    runs = _finished_runs(sweep_dir, SWEEP_FILES)
    checked = {Path(c).name: _finished_runs(Path(c), CHECK_FILES) for c in checks}
    if len(checked) != len(checks):
        raise StudyInputError(f"checks: two check sweeps share a folder name ({', '.join(str(c) for c in checks)})")
    # built beside out_dir and swapped in only once verified: a failure leaves out_dir as it was
    with folders.building(out_dir, "python -m improve_lib results") as tmp:
        for rel in SWEEP_FILES:
            _copy(sweep_dir / rel, tmp / rel)
        for run in runs:
            _copy_run(run, tmp / "runs" / run.name)
        for name, check_runs in checked.items():
            for rel in CHECK_FILES:
                _copy(check_runs[0].parent / rel, tmp / CHECKS / name / rel)
            for run in check_runs:
                _copy_run(run, tmp / CHECKS / name / "runs" / run.name)
        atomic_write_text(tmp / "COMMAND.md", f"# How these results were made\n\n```bash\n{command}\n```\n")
        if _dataset(tmp) in paper_tables.paper_datasets() and not _sweep_spec(tmp).get("grid"):
            write_summary(tmp)  # replicates of one recipe; a grid's runs differ in settings: 08's table compares them
        verify(tmp)
    return out_dir


def _finished_runs(sweep_dir: Path, needed: Sequence[str]) -> list[Path]:
    """The sweep's own runs (``runs.csv``) that reached notebook 06, after checking it has the files ``needed``."""
    missing = [f for f in needed if not (sweep_dir / f).is_file()]
    if missing:
        raise StudyInputError(f"{sweep_dir}: {missing} missing; render notebook 08 (python -m improve_lib compare DIR)")
    # the sweep's own runs (runs.csv), not a run folder that only lent its upstream notebooks to them
    names = pd.read_csv(sweep_dir / "runs.csv", dtype=str)["run"].tolist()
    runs = [sweep_dir / n for n in sorted(names, key=run_layout.natural_key) if (sweep_dir / n / manifest.MANIFEST).is_file()
            and all(src in manifest.load(sweep_dir / n).get("outputs", {}) for src, _ in RUN_FILES)]
    if not runs:
        raise StudyInputError(f"{sweep_dir}: no run has evaluated its samples (notebook 06) yet")
    return runs


def _copy_run(run: Path, dst: Path) -> None:
    """A run's files that the results folder keeps (outputs only where its manifest recorded them)."""
    recorded = manifest.load(run).get("outputs", {})
    for src, name in RUN_FILES:
        _copy(run / src, dst / name)
    for src, name in RUN_TABLES:
        if (run / src).is_file() and src in recorded:
            _copy(run / src, dst / name)
    _copy(run / manifest.MANIFEST, dst / manifest.MANIFEST)
    for fig in RUN_FIGURES:
        if (run / fig).is_file():
            _copy(run / fig, dst / Path(fig).name)


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def verify(out_dir: str | Path) -> list[str]:
    """Check a results folder: the sweep files and ``COMMAND.md`` exist, every run holds its files, and
    each copied output hashes to the sha256 its run's manifest recorded. Returns the run names; raises
    :class:`StudyInputError` naming the first problem."""
    out_dir = Path(out_dir)
    missing = [f for f in (*SWEEP_FILES, "COMMAND.md") if not (out_dir / f).is_file()]
    if missing:
        raise StudyInputError(f"{out_dir}: missing {missing}")
    runs = _run_dirs(out_dir)
    if not runs:
        raise StudyInputError(f"{out_dir}: no runs/")
    checks = _check_dirs(out_dir)
    for check in checks:
        missing = [f for f in CHECK_FILES if not (check / f).is_file()]
        if missing or not _run_dirs(check):
            raise StudyInputError(f"{check}: missing {missing or 'runs/'}")
    for run in runs + [r for check in checks for r in _run_dirs(check)]:
        recorded = manifest.load(run).get("outputs", {})
        for (src, dst), required in [(f, True) for f in RUN_FILES] + [(f, False) for f in RUN_TABLES]:
            path = run / dst
            if not path.is_file():
                if required:
                    raise StudyInputError(f"{run}: {dst} missing")
                continue
            if src != "params.yaml" and recorded.get(src) != sha256_file(path):
                raise StudyInputError(f"{path}: sha256 differs from its manifest's record of {src}: edited after the run?")
    if (out_dir / SUMMARY).is_file() and (out_dir / SUMMARY).read_text(encoding="utf-8") != summary_markdown(out_dir):
        raise StudyInputError(f"{out_dir / SUMMARY} is not what the folder's runs give: edited by hand, or written by "
                              f"older code (rewrite it with improve_lib.report.results_folder.write_summary)")
    if verdict.registered(_seed_of(r) for r in runs) and not (out_dir / FOREST).is_file():
        raise StudyInputError(f"{out_dir}: {FOREST} missing (a pre-registered folder's forest plot: write_summary writes it)")
    return [r.name for r in runs]


def _run_dirs(folder: Path) -> list[Path]:
    runs = [p for p in (folder / "runs").iterdir() if p.is_dir()] if (folder / "runs").is_dir() else []
    return sorted(runs, key=lambda p: run_layout.natural_key(p.name))


def _check_dirs(out_dir: Path) -> list[Path]:
    """The check sweeps kept under ``checks/`` (:func:`write_results`'s ``checks``)."""
    return sorted((out_dir / CHECKS).iterdir()) if (out_dir / CHECKS).is_dir() else []


def _seed_of(run: Path):
    return (manifest.load(run).get("sweep") or {}).get("seed")


# ----------------------------------------------------------------------------- the paper's tables over seeds

SUMMARY = "SUMMARY.md"
ARMS = ("baseline", "prototype", "real")


def _sweep_spec(out_dir: Path) -> dict:
    """The folder's sweep.yaml (empty when it has none)."""
    path = Path(out_dir) / "sweep.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _dataset(out_dir: Path) -> str | None:
    return _sweep_spec(out_dir).get("dataset")


def _cell(values, digits: int = 1, signed: bool = False, percent: bool = False) -> str:
    """``mean [low, high]`` (Student-t over seeds) or ``mean (n=1)``; ``-`` when nothing was measured.
    ``percent``: the interval is shown clipped to [0, 100], as in notebook 08's table."""
    mean, low, high = t_interval(list(values))
    if math.isnan(mean):
        return "-"
    if percent and not math.isnan(low):
        low, high = max(low, 0.0), min(high, 100.0)
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    return f.format(mean) + (f" (n={len(values)})" if math.isnan(low) else f" [{f.format(low)}, {f.format(high)}]")


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def trained_with(run_manifest: dict, fact: str) -> str:
    """What notebook 04 recorded per arm under ``fact`` (``mixed_precision``, ``cpu_capability``), the distinct
    values joined by ``/``; ``-`` when it recorded none."""
    per_arm = run_manifest.get("facts", {}).get("04_train_diffusion", {}).get(fact) or {}
    return "/".join(sorted(set(per_arm.values()))) or "-"


def _read_runs(out_dir: Path) -> list[dict]:
    runs = []
    for run in _run_dirs(out_dir):
        m = manifest.load(run)
        tables = {name: pd.read_csv(run / f"{name}.csv") for name in
                  ("tstr", "fidelity", "objective_plausibility", "copy_check", "tstr_per_class_f1", "probe")
                  if (run / f"{name}.csv").is_file()}
        stages = m.get("stages", {})
        metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
        trained = m.get("facts", {}).get("04_train_diffusion", {})
        runs.append({"name": run.name, "seed": (m.get("sweep") or {}).get("seed"), "tables": tables,
                     "precision": trained_with(m, "mixed_precision"), "cpu": trained_with(m, "cpu_capability"),
                     "commit": (m.get("git") or {}).get("commit", "")[:7],
                     "split": m.get("outputs", {}).get("data/split.csv"),
                     "comparison": (metrics.get("tstr") or {}).get("comparison"),
                     "external": ((metrics.get("tstr") or {}).get("external") or {}).get("external"),
                     "seconds": sum(float(st.get("seconds") or 0) for st in stages.values()),
                     "own_seconds": sum(float(st.get("seconds") or 0) for st in stages.values() if not st.get("reused_from")),
                     "params": yaml.safe_load((run / "params.yaml").read_text()) or {}})
    probes = out_dir / PROBE  # tools/probe_replicates.py: the probe of runs whose notebook 06 predates it
    if probes.is_file():
        table = pd.read_csv(probes)
        for r in runs:
            if "probe" not in r["tables"] and (table["run"] == r["name"]).any():
                r["tables"]["probe"] = table[table["run"] == r["name"]]
    return runs


def summary_markdown(out_dir: str | Path) -> str:
    """The results folder's runs (one per diffusion seed) in the paper's layout: TSTR (Tables 5/6) as mean
    and 95 % Student-t interval over seeds with the paper's numbers beside; the prototype-minus-baseline F1
    difference with its interval and paired t-test; objective plausibility per class (Tables 3/4; classes
    the calibration leaves unscored say why); fidelity, copy check and run time. Read from the copied files
    only, so :func:`verify` can check that the committed summary is what they give."""
    out_dir = Path(out_dir)
    dataset = _dataset(out_dir)
    runs = _read_runs(out_dir)
    paper = paper_tables.tstr(dataset) or {}
    p0 = runs[0]["params"]
    registered = verdict.registered(r["seed"] for r in runs)
    lines = [f"# {dataset}: the study over {len(runs)} replicate(s)" + (" (pre-registered)" if registered else ""), "",
             f"Profile `{p0.get('PROFILE')}`, {p0.get('RESOLUTION')} px, seeds {', '.join(str(r['seed']) for r in runs)}; "
             f"TSTR classifier {p0.get('CLASSIFIER')} ({p0.get('EVAL_EPOCHS')} epochs, classifier seeds "
             f"{p0.get('EVAL_SEEDS')}). Each seed is a replicate of the whole study: it draws the train/test split, the "
             "prototypes and both arms' training, so an interval over replicates holds split and training variance "
             "together. Cells: mean over replicates and 95 % Student-t interval over them "
             "(`(n=1)`: one replicate, no interval). Written by `improve_lib.report.results_folder.summary_markdown` from this "
             "folder's files; a test checks it.", ""]
    if registered:
        lines += _registered_section(out_dir, runs, dataset)
    lines += ["## Train on synthetic, test on real (the paper's Tables 5 and 6)", ""]
    per = [r["tables"]["tstr"].set_index("training_set") for r in runs if "tstr" in r["tables"]]
    rows = []
    for arm in ARMS:
        row = {"training set": arm}
        for metric in ("precision", "recall", "f1"):
            row[f"{metric} %"] = _cell([t.loc[arm, f"{metric}_mean"] for t in per if arm in t.index], percent=True)
            if paper:
                row[f"paper {metric} %"] = paper.get(metric, {}).get(arm, "")
        rows.append(row)
    lines += [pd.DataFrame(rows).to_markdown(index=False), ""]
    diffs = [t.loc["prototype", "f1_mean"] - t.loc["baseline", "f1_mean"] for t in per
             if {"prototype", "baseline"} <= set(t.index)]
    if diffs:
        text = f"**Prototype minus baseline, macro F1:** {_cell(diffs, signed=True)} points over {len(diffs)} replicate(s)"
        if registered:
            text += ": the registered test is in the verdict above."
        elif len(diffs) >= MIN_SEEDS_FOR_A_CLAIM:
            _, low, high = t_interval(diffs)
            p, claim = seed_claim(diffs, low, high)
            text += f", paired t-test p = {_p(p)}: **{claim}**."
        else:
            text += f": fewer than {MIN_SEEDS_FOR_A_CLAIM} replicates, no winner is declared."
        if paper.get("f1"):
            text += f" (Paper: {paper['f1']['prototype'] - paper['f1']['baseline']:+.2f} points, one run.)"
        within = [f"seed {r['seed']} {100 * c['diff']:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}] "
                  f"(p = {_p(c['p_value'])})" for r in runs for c in [r["comparison"]] if c]
        if within:
            text += (" Within each run, the paired bootstrap over the real test images and classifier seeds "
                     "(not over training): " + "; ".join(within) + ".")
        lines += [text, ""]
    lines += _plausibility_section(runs, dataset)
    lines += _fidelity_section(runs)
    lines += ["## Run time", "", "Notebooks 01-07 per replicate, the sum of the stage times its manifest records (a "
              "replicate that reused another's 01-03 counts their recorded time; a resumed run's stages ran in more "
              "than one sitting): " + ", ".join(
                  f"seed {r['seed']} {r['seconds'] / 60:.1f} min" + (f" ({r['own_seconds'] / 60:.1f} min its own)"
                                                                     if r["own_seconds"] < r["seconds"] else "")
                  for r in runs) + ".", ""]
    return "\n".join(lines)


FOREST = "verdict_forest.png"
PROBE = "probe.csv"  # written by tools/probe_replicates.py


def _differences(runs: list[dict]) -> pd.DataFrame:
    """Per replicate: seed, prototype - baseline macro F1 (points, mean over classifier seeds) and its within-run
    bootstrap interval, the training precision and CPU."""
    rows = []
    for r in runs:
        t = r["tables"].get("tstr")
        if t is None or not {"prototype", "baseline"} <= set(t["training_set"]):
            continue
        t = t.set_index("training_set")
        c = r["comparison"] or {}
        rows.append({"seed": r["seed"], "diff": t.loc["prototype", "f1_mean"] - t.loc["baseline", "f1_mean"],
                     "low": 100 * c.get("low", math.nan), "high": 100 * c.get("high", math.nan),
                     "precision": r["precision"], "cpu": r["cpu"], "commit": r["commit"],
                     "split_seed": r["params"].get("SPLIT_SEED"), "split": r["split"]})
    return pd.DataFrame(rows, columns=["seed", "diff", "low", "high", "precision", "cpu", "commit", "split_seed", "split"])


_VERDICT_HEAD = ["| replicates | prototype − baseline, macro F1 [95 % t] | paired t p | 90 % t-interval | TOST p | verdict |",
                "|---|---|---|---|---|---|"]


def _verdict_row(res: verdict.Verdict, words: str) -> str:
    """The registered analysis as one row under ``_VERDICT_HEAD``: replicates, mean [95 % t], paired t p, 90 %
    interval, TOST p, ``words``."""
    f = "{:+.1f}".format
    return (f"| {res.n} of {verdict.PLANNED_REPLICATES} | {f(res.mean)} [{f(res.low)}, {f(res.high)}] | {_p(res.p)} | "
            f"[{f(res.low90)}, {f(res.high90)}] | {_p(res.tost_p)} | {words} |")


def _registered_section(out_dir: Path, runs: list[dict], dataset: str) -> list[str]:
    """The analysis of ``results/PREREGISTRATION.md``: test, TOST, words, per-class differences, forest plot,
    precision per replicate and the power the spread seen gives."""
    d = _differences(runs)
    res = verdict.verdict(d["diff"].tolist())
    f = "{:+.1f}".format
    lines = ["## The pre-registered verdict", "",
             f"As registered in `{verdict.PREREGISTRATION}` (seeds {', '.join(map(str, verdict.PREREGISTERED_SEEDS))}; "
             f"paired t-test two-sided α = {verdict.ALPHA}; TOST against ±{verdict.MARGIN:.1f} points):", "",
             *_VERDICT_HEAD, _verdict_row(res, f"**{res.words}**"), ""]
    if res.n >= 2:
        sd = float(d["diff"].std(ddof=1))
        paper = paper_tables.tstr(dataset) or {}
        effect = (paper.get("f1", {}).get("prototype", math.nan) - paper.get("f1", {}).get("baseline", math.nan))
        lines += [f"sd of the difference over these replicates: {sd:.2f} points; with {verdict.PLANNED_REPLICATES} "
                  f"replicates at that sd the paired t-test finds a true +2.0 points with probability "
                  f"{verdict.power(sd, 2.0):.2f}" + (f" and the paper's {effect:+.2f} with {verdict.power(sd, effect):.2f}"
                                                     if not math.isnan(effect) else "") + " (noncentral t).", ""]
    lines += [f"![forest plot]({FOREST})", "", "Per replicate (within-run interval: the paired bootstrap over the "
              "real test images and classifier seeds; training precision and CPU from the manifest):", "",
              d.assign(**{"difference [within-run 95 %]": [f"{f(a)} [{f(b)}, {f(c)}]" for a, b, c in
                                                           zip(d["diff"], d["low"], d["high"])]})
              [["seed", "difference [within-run 95 %]", "precision", "cpu", "commit"]].to_markdown(index=False), ""]
    if d["precision"].nunique() > 1:
        lines += ["The replicates mix training precisions; the registered test within each:", ""]
        for prec, g in d.groupby("precision"):
            sub = verdict.verdict(g["diff"].tolist(), planned=len(g))
            lines.append(f"- {prec}: n = {sub.n}, {f(sub.mean)} [{f(sub.low)}, {f(sub.high)}], p = {_p(sub.p)}")
        lines.append("")
    check_runs = [_read_runs(c) for c in _check_dirs(out_dir)]
    if check_runs:
        found = pd.concat([_differences(c) for c in check_runs], ignore_index=True)
        lines += registered_checks.summary_lines(d, found[registered_checks.COLUMNS])
    # the external test set's scores: the replicates' own, or those of their reruns with EXTERNAL_TEST_DIR
    external = runs if any(r["external"] for r in runs) else [r for c in check_runs for r in c if r["external"]]
    lines += _probe_lines(runs, d) + _external_lines(external, d)
    per_class = [r["tables"]["tstr_per_class_f1"] for r in runs if "tstr_per_class_f1" in r["tables"]]
    if per_class:
        pc = verdict.per_class_differences(per_class)
        pc["prototype − baseline F1 [95 % t]"] = [f"{f(a)} [{f(b)}, {f(c)}]" if not math.isnan(b) else f"{f(a)} (n=1)"
                                                  for a, b, c in zip(pc["difference"], pc["low"], pc["high"])]
        lines += ["Per class (the paper's Tables 5 and 6 are per class; a secondary endpoint, no verdict words):", "",
                  pc[["class", "prototype − baseline F1 [95 % t]", "n"]].to_markdown(index=False), ""]
    return lines


def _probe_lines(runs: list[dict], tstr_diffs: pd.DataFrame) -> list[str]:
    """The registered second instrument (:mod:`improve_lib.metrics.probe`) beside the TSTR difference."""
    rows = []
    for r in runs:
        t = r["tables"].get("probe")
        if t is not None and {"prototype", "baseline"} <= set(t["training_set"]):
            f1 = t.set_index("training_set")["macro_f1"]
            rows.append({"seed": r["seed"], "probe": f1["prototype"] - f1["baseline"], "real": f1.get("real")})
    if not rows:
        return []
    d = pd.DataFrame(rows).merge(tstr_diffs[["seed", "diff"]], on="seed", how="left")
    res = verdict.verdict(d["probe"].tolist(), planned=1)
    same = int((d["probe"] * d["diff"] > 0).sum())
    f = "{:+.1f}".format
    p = f", paired t p = {_p(res.p)}" if res.n >= 2 else ""
    return [f"**Second instrument** (registered secondary endpoint: a logistic-regression probe on the encoder's "
            f"standardised features, `improve_lib.metrics.probe`): prototype − baseline macro F1 {f(res.mean)}"
            + (f" [{f(res.low)}, {f(res.high)}]" if res.n >= 2 else "") + f" points over {res.n} replicate(s){p}; "
            f"its sign agrees with TSTR's in {same} of {len(d)}. The probe trained on the real training images "
            f"scores {_cell(d['real'].dropna().tolist())} %.", ""]


def _external_lines(runs: list[dict], tstr_diffs: pd.DataFrame) -> list[str]:
    """The registered secondary endpoint on the external test set (notebook 06's EXTERNAL_TEST_DIR), where replicates
    had one: the primary analysis's table on it, each training set's macro F1 there, and whether each replicate's
    difference keeps the sign it had on the test split (``tstr_diffs``: :func:`_differences`)."""
    rows, sizes = [], set()
    for r in runs:
        ext = r.get("external") or {}
        sets = ext.get("sets", {})
        if {"prototype", "baseline"} <= set(sets):
            f1 = {k: 100 * v["mean"]["f1"] for k, v in sets.items()}
            rows.append({"seed": r["seed"], "external": f1["prototype"] - f1["baseline"], **f1})
            if ext.get("n_test"):
                present = sorted(c for c, n in (ext.get("n_test_per_class") or {}).items() if n)
                sizes.add(f"{ext['n_test']} images of {len(present)} classes ({', '.join(present)})")
    if not rows:
        return []
    d = pd.DataFrame(rows).merge(tstr_diffs[["seed", "diff"]], on="seed", how="left")
    res = verdict.verdict(d["external"].tolist())
    f = "{:+.1f}".format
    same = int((d["external"] * d["diff"] > 0).sum())
    images = "".join(f", {s}" for s in sorted(sizes))
    scores = ", ".join(f"{name} {_cell(d[name].dropna().tolist())}" for name in ("real", "baseline", "prototype")
                       if name in d)
    return [f"**On the external test set** (EXTERNAL_TEST_DIR: real images of other lesions or cells{images}, scored "
            "by the same classifiers; registered secondary endpoint, the primary analysis on it):", "",
            *_VERDICT_HEAD, (_verdict_row(res, res.words) if res.n >= 2 else
                            f"| 1 of {verdict.PLANNED_REPLICATES} | {f(res.mean)} | - | - | - | {res.words} |"), "",
            f"Macro F1 there, % over replicates [95 % t]: {scores}. Per replicate (seed: external, test split): "
            + "; ".join(f"{int(r.seed)}: {f(r.external)}, {f(r.diff)}" for r in d.itertuples())
            + f"; the sign agrees in {same} of {len(d)}.", ""]


def write_forest(out_dir: str | Path) -> Path | None:
    """The forest plot of a pre-registered results folder (:data:`FOREST`); None for any other folder."""
    out_dir = Path(out_dir)
    runs = _read_runs(out_dir)
    if not runs or not verdict.registered(r["seed"] for r in runs):
        return None
    d = _differences(runs)
    fig = verdict.forest_figure(d, verdict.verdict(d["diff"].tolist()), f"{_dataset(out_dir)}: the registered endpoint")
    path = out_dir / FOREST
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def _plausibility_section(runs: list[dict], dataset: str) -> list[str]:
    scored = [r for r in runs if "objective_plausibility" in r["tables"]]
    tabs = [r["tables"]["objective_plausibility"].set_index("class") for r in scored]
    if not tabs:
        return []
    expert = paper_tables.plausibility(dataset) or {}
    rows = []
    for cls in tabs[0].index:
        row = {"class": cls}
        for arm in ("baseline", "prototype"):
            col = f"{arm} %"
            row[f"{arm} %"] = _cell([t.loc[cls, col] for t in tabs if cls in t.index and col in t.columns
                                     and not pd.isna(t.loc[cls, col])], percent=True)
            if expert:
                row[f"expert {arm} % (paper)"] = (expert[arm] if cls == "mean" else
                                                  expert.get("per_class", {}).get(cls, {}).get(arm, ""))
        # one entry per kind of reason with its seeds (the rates behind each are in that run's calibration table)
        reasons: dict[str, list] = {}
        for r, t in zip(scored, tabs):
            if "reason" in t.columns and cls in t.index and isinstance(t.loc[cls, "reason"], str) and t.loc[cls, "reason"]:
                reasons.setdefault(t.loc[cls, "reason"].split(":")[0], []).append(str(r["seed"]))
        row["not scored because"] = ("; ".join(f"{why} (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)})"
                                               for why, seeds in reasons.items()) if row["baseline %"] == "-" else "")
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table["not scored because"].any():
        table = table.drop(columns="not scored because")
    return ["## Objective plausibility per class (the paper's Tables 3 and 4 layout)", "",
            "% of generated images inside the class's morphometric region (learnt on the real training images, "
            "calibrated on the held-out real ones); the `mean` row covers the scored classes only. The paper's "
            "numbers are one expert's judgments of its GPU-scale images: another instrument, shown for orientation.",
            "", table.to_markdown(index=False), ""]


def _fidelity_section(runs: list[dict]) -> list[str]:
    lines = []
    fid = [r["tables"]["fidelity"] for r in runs if "fidelity" in r["tables"]]
    if fid:
        rows = []
        for arm in ("real train", "baseline", "prototype"):
            sub = [f[(f["arm"] == arm) & (f["class_name"] == "all")] for f in fid]
            row = {"set": arm}
            for col, scale in (("precision", 100), ("recall", 100), ("density", 1), ("coverage", 100),
                               ("kid_mean", 1), ("prototype_consistency", 100)):
                vals = [float(s[col].iloc[0]) * scale for s in sub if len(s) and col in s and not pd.isna(s[col].iloc[0])]
                row[col + (" %" if scale == 100 else "")] = _cell(vals, digits=1 if scale == 100 else 3,
                                                                  percent=scale == 100)
            rows.append(row)
        lines += ["## Fidelity and diversity (encoder space of notebook 02, against the real test images)", "",
                  pd.DataFrame(rows).to_markdown(index=False), ""]
    cc = [r["tables"]["copy_check"] for r in runs if "copy_check" in r["tables"]]
    if cc:
        rows = []
        for (arm, space), _ in cc[0].groupby(["arm", "space"], sort=False):
            vals = [100 * float(c[(c.arm == arm) & (c.space == space)]["share_flagged"].iloc[0]) for c in cc]
            rows.append({"set": arm, "space": space, "near-copies %": _cell(vals, digits=2, percent=True)})
        lines += ["## Copy check", "", "Share of images closer to a training image than any real test image is.", "",
                  pd.DataFrame(rows).to_markdown(index=False), ""]
    return lines


def write_summary(out_dir: str | Path) -> Path:
    """(Re)write ``SUMMARY.md`` of a results folder from its files; returns its path."""
    path = Path(out_dir) / SUMMARY
    write_forest(out_dir)
    atomic_write_text(path, summary_markdown(out_dir))
    return path
