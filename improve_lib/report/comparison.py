"""Notebook 08's glue: gather the metrics of every run in a sweep folder, average them over seeds
with Student-t intervals, and plot them beside the paper's numbers.

Each run folder contributes what its notebooks wrote: ``prototypes/metrics.json`` (03: nearest-
prototype accuracy of the CPL prototypes and of plain class means), ``metrics/metrics.json`` (06:
TSTR macro F1 per training set, the paired prototype-minus-baseline difference, PRDC, KID,
prototype consistency) and the manifest's facts of 07 (objective plausibility). Runs that did not
reach a notebook simply lack its metrics.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import yaml
from scipy import stats

from improve_lib.core import manifest, run_layout
from improve_lib.core.errors import StudyInputError
from improve_lib.metrics import paper_tables

# metric name -> (unit text, paper table it corresponds to or None)
METRICS = {
    "TSTR macro F1 %": "tstr",
    "TSTR F1 difference (points)": None,
    "nearest-prototype test accuracy %": None,
    "prototype consistency %": None,
    "objective plausibility %": "plausibility",
    "precision %": None, "recall %": None, "density": None, "coverage %": None, "KID": None,
    "largest |channel mean gap|": None, "channel std ratio farthest from 1": None,
}
DEFAULT_PLOT_METRICS = ("TSTR macro F1 %", "nearest-prototype test accuracy %", "objective plausibility %")


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def evaluation_rows(ev: dict | None) -> list[dict]:
    """``[{metric, arm, value}]`` of notebook 06's ``metrics.json`` (already read): TSTR per training set and the
    arms' difference, fidelity over all classes, tone. Shared by :func:`run_metrics` (a run folder) and readers of
    a results folder, which keeps the same file beside its runs' other evidence."""
    rows = []
    if not ev:
        return rows
    for arm, s in ev["tstr"]["sets"].items():
        rows.append({"metric": "TSTR macro F1 %", "arm": arm, "value": 100 * s["mean"]["f1"]})
    comp = ev["tstr"].get("comparison")
    if comp:
        rows.append({"metric": "TSTR F1 difference (points)", "arm": "prototype - baseline",
                     "value": 100 * comp["diff"]})
    for r in ev.get("fidelity", []):
        if r.get("class_name") != "all":
            continue
        for key, name, scale in (("prototype_consistency", "prototype consistency %", 100),
                                 ("precision", "precision %", 100), ("recall", "recall %", 100),
                                 ("density", "density", 1), ("coverage", "coverage %", 100),
                                 ("kid_mean", "KID", 1)):
            if r.get(key) is not None:
                rows.append({"metric": name, "arm": r["arm"], "value": scale * float(r[key])})
    for arm, t in (ev.get("tone") or {}).items():
        rows.append({"metric": "largest |channel mean gap|", "arm": arm, "value": t["max_abs_mean_gap"]})
        rows.append({"metric": "channel std ratio farthest from 1", "arm": arm, "value": t["worst_std_ratio"]})
    return rows


def run_metrics(run_dir: str | Path, done: set[str] | None = None) -> list[dict]:
    """``[{metric, arm, value}]`` for one run folder (percentages in percent). With ``done`` (notebook
    names finished with the run's current stage keys), metrics of other notebooks are left out."""
    run_dir = Path(run_dir)
    ok = lambda prefix: done is None or any(nb.startswith(prefix) for nb in done)  # noqa: E731
    rows = []
    proto = _read_json(run_layout.prototypes_dir(run_dir) / "metrics.json") if ok("03_") else None
    if proto:
        rows.append({"metric": "nearest-prototype test accuracy %", "arm": "CPL prototypes",
                     "value": 100 * proto["cpl"]["test_accuracy"]})
        rows.append({"metric": "nearest-prototype test accuracy %", "arm": "class means",
                     "value": 100 * proto["class_means"]["test_accuracy"]})
    ev = _read_json(run_layout.metrics_file(run_dir)) if ok("06_") else None
    rows += evaluation_rows(ev)
    facts = manifest.load(run_dir).get("facts", {}).get("07_plausibility_review", {}) if ok("07_") else {}
    for arm, value in (facts.get("objective_mean") or {}).items():
        rows.append({"metric": "objective plausibility %", "arm": arm, "value": float(value)})
    return rows


def collect(sweep_dir: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Long table of every run's metrics (columns: run, seed, the grid keys, status, metric, arm, value)
    and the grid keys. Raises :class:`StudyInputError` when the folder holds no sweep runs."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise StudyInputError(f"SWEEP_DIR {sweep_dir} does not exist: run `python -m improve_lib sweep ...` first")
    rows, grid_keys = [], []
    spec_path = sweep_dir / "sweep.yaml"
    if spec_path.is_file():  # the grid's own order (manifests store keys sorted)
        grid_keys = list((yaml.safe_load(spec_path.read_text()) or {}).get("grid") or {})
    for run_dir in sorted((p for p in sweep_dir.iterdir() if (p / manifest.MANIFEST).is_file()),
                          key=lambda p: run_layout.natural_key(p.name)):  # seed9 before seed10
        m = manifest.load(run_dir)
        info = m.get("sweep")
        if not info:
            continue
        for k in info["point"]:
            if k not in grid_keys:
                grid_keys.append(k)
        keys, stages = m.get("stage_keys", {}), m.get("stages", {})
        current = {nb for nb, st in stages.items() if st.get("status") == "done" and st.get("key") == keys.get(nb)}
        base = {"run": run_dir.name, "seed": info["seed"], **{k: _hashable(v) for k, v in info["point"].items()},
                "complete": bool(stages) and set(stages) <= current}
        rows += [{**base, **r} for r in run_metrics(run_dir, current)]
        if not rows or rows[-1]["run"] != run_dir.name:
            rows.append({**base, "metric": None, "arm": None, "value": math.nan})
    if not rows:
        raise StudyInputError(f"{sweep_dir} holds no run folders written by a sweep (no manifest with a 'sweep' entry)")
    long = pd.DataFrame(rows)
    grid = (yaml.safe_load(spec_path.read_text()) or {}).get("grid") or {} if spec_path.is_file() else {}
    for key in reversed([k for k in grid_keys if k in grid]):  # the grid's own order of values, not alphabetical
        rank = {yaml.safe_dump(_hashable(v)): i for i, v in enumerate(grid[key])}
        long = long.sort_values(key, key=lambda col: col.map(lambda v: rank.get(yaml.safe_dump(v), len(rank))),
                                kind="stable")
    return long.reset_index(drop=True), grid_keys


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval over seeds (``nan`` bounds for a single seed)."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return (mean, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return (mean, mean - half, mean + half)


def summarise(long: pd.DataFrame, grid_keys: Sequence[str], level: float = 0.95) -> pd.DataFrame:
    """Mean and Student-t interval over seeds per grid point, metric and arm (``n`` = seeds)."""
    data = long.dropna(subset=["metric"])
    columns = list(grid_keys) + ["metric", "arm", "n", "mean", "low", "high", "seeds"]
    out = []
    for key, g in data.groupby(list(grid_keys) + ["metric", "arm"], sort=False, dropna=False):
        mean, low, high = t_interval(g["value"].tolist(), level)
        out.append({**dict(zip(list(grid_keys) + ["metric", "arm"], key)), "n": len(g), "mean": mean,
                    "low": low, "high": high, "seeds": ",".join(str(s) for s in sorted(g["seed"]))})
    return pd.DataFrame(out, columns=columns)


TABLE_METRICS = ("TSTR macro F1 %", "TSTR F1 difference (points)",
                 "nearest-prototype test accuracy %", "prototype consistency %", "objective plausibility %",
                 "KID", "largest |channel mean gap|", "channel std ratio farthest from 1")


def point_label(grid_keys: Sequence[str], values: Sequence) -> str:
    """``GUIDANCE_SCALE=2, ETA=0``: the name of one grid point in tables and plots ("all runs" in a sweep
    over seeds alone)."""
    if not grid_keys:
        return "all runs"
    return ", ".join(f"{k}={_short(v)}" for k, v in zip(grid_keys, values))


def wide_table(summary: pd.DataFrame, grid_keys: Sequence[str],
               metrics: Sequence[str] | None = TABLE_METRICS) -> pd.DataFrame:
    """One row per metric and arm, one column per grid point: ``mean [low, high]`` over the seeds
    (``mean (n=1)`` for a single seed). ``metrics=None`` keeps every metric."""
    s = summary if metrics is None else summary[summary.metric.isin(metrics)]
    if s.empty:
        return pd.DataFrame()

    def fmt(r):
        num = (lambda x: f"{x:.1f}") if r["metric"].endswith("%") or "points" in r["metric"] else (lambda x: f"{x:.3g}")
        if math.isnan(r["low"]):
            return f"{num(r['mean'])} (n={r['n']})"
        low, high = r["low"], r["high"]
        if r["metric"].endswith("%"):  # a t-interval can leave [0, 100]; shown clipped (summary.csv is not)
            low, high = max(low, 0.0), min(high, 100.0)
        return f"{num(r['mean'])} [{num(low)}, {num(high)}]"

    order = {m: i for i, m in enumerate(metrics or dict.fromkeys(s.metric))}
    s = s.assign(cell=s.apply(fmt, axis=1), row=s.metric + " (" + s.arm.astype(str) + ")",
                 point=[point_label(grid_keys, v) for v in s[list(grid_keys)].itertuples(index=False)],
                 order=s.metric.map(order))
    s = s.sort_values("order", kind="stable")
    table = s.pivot_table(index="row", columns="point", values="cell", aggfunc="first", sort=False)
    table.columns.name = None
    table.index.name = "metric (arm)"
    seeds = s.groupby("point", sort=False)["n"].max()
    return pd.concat([pd.DataFrame([seeds.astype(str)], index=["seeds"]), table]).rename_axis("metric (arm)").reset_index()


def paper_reference(dataset: str) -> dict[str, list[dict]]:
    """The paper's numbers that can be drawn as reference lines: ``{metric: [{dataset, arm, value,
    label}]}``. For a dataset of the paper (ham10000, bone_marrow) its own numbers; for others both
    datasets' numbers, labelled as other data (the paper has no synthetic-cell results)."""
    known = paper_tables.paper_datasets()
    names = [dataset] if dataset in known else known
    suffix = "" if dataset in known else ", other data"
    ref: dict[str, list[dict]] = {"TSTR macro F1 %": [], "objective plausibility %": []}
    for ds in names:
        for arm, v in paper_tables.tstr(ds)["f1"].items():
            ref["TSTR macro F1 %"].append({"dataset": ds, "arm": arm, "value": v,
                                           "label": f"paper {ds} {arm}{suffix}"})
        for arm in ("baseline", "prototype"):
            ref["objective plausibility %"].append({"dataset": ds, "arm": arm, "value": paper_tables.plausibility(ds)[arm],
                                                    "label": f"paper {ds} experts, {arm}{suffix}"})
    return ref


def figure(long: pd.DataFrame, summary: pd.DataFrame, grid_keys: Sequence[str], dataset: str,
           metrics: Sequence[str] = DEFAULT_PLOT_METRICS, level: float = 0.95):
    """One panel per metric: mean and t-interval over seeds per grid point (one colour per arm), each
    seed as a dot, the paper's numbers as dashed reference lines."""
    metrics = [m for m in metrics if m in set(summary.metric)]
    if not metrics:
        raise StudyInputError(f"none of the metrics {list(metrics)} was found in the sweep's runs")
    # a sweep over seeds alone has one point: a frame of one row and no columns
    points = summary[list(grid_keys)].drop_duplicates().reset_index(drop=True) if grid_keys else pd.DataFrame(index=[0])
    labels = [point_label(grid_keys, row).replace(", ", "\n") for row in points.itertuples(index=False)]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(6.5, 1.6 * len(points) + 3.5), 3.2 * len(metrics)),
                             squeeze=False)
    axes = axes.T
    ref = paper_reference(dataset)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics):
        s = summary[summary.metric == metric]
        arms = list(dict.fromkeys(s.arm))
        width = 0.8 / max(len(arms), 1)
        for j, arm in enumerate(arms):
            colour = colours[j % len(colours)]
            for i, row in enumerate(points.itertuples(index=False)):
                mask = np.logical_and.reduce([s[k] == v for k, v in zip(grid_keys, row)]) & (s.arm == arm)
                if not mask.any():
                    continue
                r = s[mask].iloc[0]
                x = i + (j - (len(arms) - 1) / 2) * width
                yerr = None if math.isnan(r["low"]) else [[r["mean"] - r["low"]], [r["high"] - r["mean"]]]
                ax.errorbar(x, r["mean"], yerr=yerr, fmt="o", color=colour, capsize=4, markersize=7,
                            label=arm if i == 0 else None)
                raw = long[(long.metric == metric) & (long.arm == arm)
                           & np.logical_and.reduce([long[k] == v for k, v in zip(grid_keys, row)])]
                ax.scatter(np.full(len(raw), x + 0.08), raw["value"], s=12, color=colour, alpha=0.45)
        styles = {ds: st for ds, st in zip(paper_tables.paper_datasets(), ("--", ":"))}
        for r in ref.get(metric, []):  # the arm's colour, one line style per dataset of the paper
            colour = colours[arms.index(r["arm"]) % len(colours)] if r["arm"] in arms else "0.4"
            ax.axhline(r["value"], color=colour, linestyle=styles.get(r["dataset"], "--"), linewidth=1,
                       alpha=0.8, label=r["label"])
        ax.set_xticks(range(len(points)), labels, fontsize=8)
        ax.set_xlim(-0.6, len(points) - 0.4)
        ax.set_title(metric, fontsize=10)
        if "%" in metric and "difference" not in metric:
            ax.set_ylim(-2, 102)
        ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(f"Mean and {100 * level:g} % t-interval over seeds (small dots: single seeds; lines: the paper)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _short(value) -> str:
    if isinstance(value, tuple):
        return "+".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe(summary: pd.DataFrame, grid_keys: Sequence[str], metric: str = "TSTR macro F1 %") -> str:
    """Markdown sentences, one per arm: where the metric is highest and lowest over the grid, and
    whether their intervals overlap (with one seed there is no interval and the text says so)."""
    s = summary[summary.metric == metric]
    if s.empty:
        return f"No run of this sweep reported {metric}."
    lines = []
    for arm, g in s.groupby("arm", sort=False):
        if len(g) < 2:
            continue
        best, worst = g.loc[g["mean"].idxmax()], g.loc[g["mean"].idxmin()]
        if best["mean"] - worst["mean"] < 1e-9:
            lines.append(f"- **{arm}**: {metric} is {best['mean']:.1f} at every grid point.")
            continue
        where = lambda r: ", ".join(f"{k} = {_short(r[k])}" for k in grid_keys)  # noqa: E731
        text = (f"- **{arm}**: {metric} is highest at {where(best)} ({best['mean']:.1f}) and lowest at "
                f"{where(worst)} ({worst['mean']:.1f})")
        if metric.endswith("%"):  # as in the table: percentages' intervals clipped to 0-100
            best, worst = (r.copy() for r in (best, worst))
            for r in (best, worst):
                r["low"], r["high"] = max(r["low"], 0.0), min(r["high"], 100.0)
        if math.isnan(best["low"]) or math.isnan(worst["low"]):
            text += "; with a single seed there is no interval to judge the gap."
        elif best["low"] > worst["high"]:
            text += f"; their {int(best['n'])}-seed intervals do not overlap."
        else:
            text += (f"; their {int(best['n'])}-seed intervals overlap ([{best['low']:.1f}, {best['high']:.1f}] vs "
                     f"[{worst['low']:.1f}, {worst['high']:.1f}]), so the seeds do not separate them.")
        lines.append(text)
    return "\n".join(lines) or f"Only one grid point reported {metric}."


MIN_SEEDS_FOR_A_CLAIM = 3


def seed_claim(differences: Sequence[float], low: float, high: float) -> tuple[float, str]:
    """The paired t-test's p (``scipy.stats.ttest_1samp`` of the per-seed prototype-minus-baseline
    differences against 0) and the claim their t-interval ``[low, high]`` supports."""
    p = float(stats.ttest_1samp(np.asarray(differences, dtype=float), 0.0).pvalue)
    claim = ("the prototype arm is better" if low > 0 else "the baseline is better" if high < 0
             else "neither arm is better beyond the variation between replicates")
    return p, claim


def arm_verdict(long: pd.DataFrame, grid_keys: Sequence[str], level: float = 0.95) -> str:
    """Per grid point, the prototype-minus-baseline TSTR F1 difference over seeds: mean, Student-t
    interval and the paired t-test's p (``scipy.stats.ttest_1samp`` of the per-seed differences against 0).
    A winner is named only with at least :data:`MIN_SEEDS_FOR_A_CLAIM` seeds and an interval that excludes
    0. A seed draws the split, the prototypes and both arms' training (unless SPLIT_SEED fixes the split), so
    each is a replicate of the whole study and the interval covers split and training variance together."""
    diffs = long[long.metric == "TSTR F1 difference (points)"]
    if diffs.empty:
        return "No run of this sweep compared both arms (ARMS needs baseline and prototype)."
    lines = []
    for key, g in diffs.groupby(list(grid_keys), sort=False, dropna=False) if grid_keys else [((), diffs)]:
        where = point_label(grid_keys, key if isinstance(key, tuple) else (key,))
        values = g["value"].to_numpy(dtype=float)
        mean, low, high = t_interval(values.tolist(), level)
        if len(values) < MIN_SEEDS_FOR_A_CLAIM:
            lines.append(f"- **{where}**: {len(values)} seed(s), difference {mean:+.1f} points: fewer than "
                         f"{MIN_SEEDS_FOR_A_CLAIM} seeds, so no winner is declared.")
            continue
        p, claim = seed_claim(values, low, high)
        lines.append(f"- **{where}**: prototype minus baseline {mean:+.1f} points, {int(level * 100)} % t-interval over "
                     f"{len(values)} seeds (whole-study replicates) [{low:+.1f}, {high:+.1f}], paired t-test "
                     f"p = {p:.3f}: **{claim}**.")
    return "\n".join(lines)

