"""The real-data recipe screening (``params/ablations/recipe_real.yaml``) as one table and one sample figure per dataset.

    python tools/screening_table.py SWEEP_DIR [SWEEP_DIR ...] --out results/recipe_screening_real

Each SWEEP_DIR is a finished sweep of the preset (one dataset, notebook 08 rendered). Per variant it reads 08's
``comparison/summary.csv``: TSTR macro F1 of each arm and of the real images, all scored on the validation split
(notebook 06's EVAL_SPLIT; a sweep scored on the test split is refused, the test split is the verdict's), the gap
(real minus the better arm) and its change against the reference variant, KID, PRDC recall and coverage per arm,
and from the images themselves each arm's fine detail and spread of tone against the real validation images'
(``improve_lib.metrics.tone.likeness``; 1 = as real, mean over the variant's seeds).
Writes ``<out>/table.md`` (all datasets) and ``<out>/<dataset>_samples.png``: real validation images beside each
variant's samples, per class, at the run's resolution. Nothing of the dataset is copied but those few images,
as the sample grids the runs already hold.

    python tools/screening_table.py --over-seeds RESULTS_DIR [RESULTS_DIR ...] --out results/recipe_screening_real

The same screening over the seeds run so far, from results folders (``python -m improve_lib results`` of each
sitting's sweep; they keep every run's ``metrics.json`` and manifest, not its images): per dataset and variant the
gap per seed, and the change of the gap against the reference variant paired within each seed and CPU (the two
trained on the same split, seed and machine: a seed rerun on another CPU is another replicate, its bf16 kernels round
differently), mean and Student-t 95 % interval over the pairs. Writes ``<out>/over_seeds.md``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import yaml

from improve_lib import data
from improve_lib.core import manifest
from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import atomic_path, atomic_write_text, sha256_file
from improve_lib.diffusion import sample
from improve_lib.metrics import tone
from improve_lib.report import comparison, figures, results_folder

ARMS = ("baseline", "prototype")
METRICS = (("KID", "KID", 2), ("recall %", "recall", 1), ("coverage %", "coverage", 1), ("precision %", "precision", 1))
LIKENESS = (("detail", "detail_ratio"), ("tone spread", "tone_spread_ratio"))  # column, key of tone.likeness


def _mean(summary: pd.DataFrame, variant: str, metric: str, arm: str) -> float:
    row = summary[(summary["RECIPE"] == variant) & (summary["metric"] == metric) & (summary["arm"] == arm)]
    return float(row["mean"].iloc[0]) if len(row) else float("nan")


def _runs(sweep: Path) -> pd.DataFrame:
    runs = pd.read_csv(sweep / "runs.csv", dtype=str)
    return runs[runs["status"].str.startswith(("done", "skipped"))]


def _scored_on_validation(run: Path, metrics_file: Path) -> dict:
    """The run's notebook 06 metrics, refused unless scored on the validation split (the choice never sees the test
    split)."""
    metrics = json.loads(metrics_file.read_text())
    if metrics.get("eval_split") != "validation":
        raise StudyInputError(f"{run}: scored on the {metrics.get('eval_split', 'test')} split; a recipe is chosen on "
                              f"the validation split (N_VALIDATION >= 1, EVAL_SPLIT validation)")
    return metrics


def check_validation_split(sweep: Path) -> None:
    """Every run of ``sweep`` scored on its validation split."""
    for name in _runs(sweep)["run"]:
        _scored_on_validation(sweep / name, sweep / name / "metrics" / "metrics.json")


def likeness_table(sweep: Path) -> pd.DataFrame:
    """Per variant (mean over its runs), each arm's samples against the run's real validation images:
    ``detail <arm>`` and ``tone spread <arm>`` (:func:`improve_lib.metrics.tone.likeness`, 1 = as real)."""
    rows = []
    runs = _runs(sweep)
    for run, variant in zip(runs["run"], runs["RECIPE"]):
        params = yaml.safe_load((sweep / run / "params.yaml").read_text())
        resolution, table = int(params["RESOLUTION"]), data.read_split(sweep / run)
        real = data.load_images(table.loc[table.split == "validation", "path"], resolution)
        names = data.class_names_of(table)
        found = tone.likeness(real, {arm: data.load_images(sample.read_samples(
            sweep / run, arm, names, params["N_PER_CLASS"])["path"], resolution) for arm in ARMS})
        rows.append({"variant": variant, **{f"{column} {arm}": found[arm][key] for arm in ARMS
                                            for column, key in LIKENESS}})
    return pd.DataFrame(rows).groupby("variant", sort=False).mean().reset_index()


def dataset_table(sweep: Path, reference: str) -> tuple[str, pd.DataFrame]:
    """``(dataset, one row per variant)`` from a finished screening sweep."""
    spec = yaml.safe_load((sweep / "sweep.yaml").read_text())
    variants = list((spec.get("grid") or {}).get("RECIPE") or [])
    if reference not in variants:
        raise StudyInputError(f"{sweep}/sweep.yaml: no variant {reference!r} to compare against (variants: {variants})")
    check_validation_split(sweep)
    summary = pd.read_csv(sweep / "comparison" / "summary.csv")
    rows = []
    for v in variants:
        f1 = {arm: _mean(summary, v, "TSTR macro F1 %", arm) for arm in (*ARMS, "real")}
        tstr = (summary["RECIPE"] == v) & (summary["metric"] == "TSTR macro F1 %")  # the seeds that reached 06
        row = {"variant": v, "seeds": int(summary.loc[tstr, "n"].max()),
               **{f"F1 {k}": f1[k] for k in f1}, "gap": f1["real"] - max(f1[a] for a in ARMS)}
        for metric, short, _ in METRICS:
            row.update({f"{short} {arm}": _mean(summary, v, metric, arm) for arm in ARMS})
        rows.append(row)
    table = pd.DataFrame(rows).merge(likeness_table(sweep), on="variant", how="left")
    table.insert(table.columns.get_loc("gap") + 1, "gap change",
                 table["gap"] - table.loc[table["variant"] == reference, "gap"].iloc[0])
    return spec.get("dataset"), table


def markdown(dataset: str, table: pd.DataFrame) -> str:
    """The table a README shows: F1 per arm and real, the gap and its change, then fidelity and likeness to the
    real images as baseline / prototype."""
    head = ("| variant | TSTR F1 baseline | prototype | real | gap (real − better arm) | gap change |"
            + "".join(f" {m} (b / p) |" for m, _, _ in METRICS) + "".join(f" {c} (b / p; real 1) |" for c, _ in LIKENESS))
    lines = [f"**{dataset}** (validation split, {int(table['seeds'].max())} seed(s))", "", head,
             "|" + "---|" * (6 + len(METRICS) + len(LIKENESS))]
    for r in table.to_dict("records"):
        cells = [r["variant"], *(f"{r[k]:.1f}" for k in ("F1 baseline", "F1 prototype", "F1 real", "gap")),
                 f"{r['gap change']:+.1f}"]
        cells += [f"{r[f'{s} baseline']:.{d}f} / {r[f'{s} prototype']:.{d}f}" for _, s, d in METRICS]
        cells += [f"{r[f'{c} baseline']:.2f} / {r[f'{c} prototype']:.2f}" for c, _ in LIKENESS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def sample_figure(sweep: Path, per_class: int = 2):
    """Real validation images, then each variant's samples of both arms, ``per_class`` per class."""
    runs = _runs(sweep)
    first = sweep / runs["run"].iloc[0]
    params = yaml.safe_load((first / "params.yaml").read_text())
    table = data.read_split(first)
    class_names = data.class_names_of(table)
    held = table[table.split == "validation"]
    real = [data.load_image(p, int(params["RESOLUTION"])) for c in class_names
            for p in held.loc[held.class_name == c, "path"].head(per_class)]
    rows, labels = [real], ["real (validation)"]
    for run, variant in zip(runs["run"], runs["RECIPE"]):
        for arm in ARMS:
            t = sample.read_samples(sweep / run, arm, class_names, per_class)
            rows.append([p for c in class_names for p in t.loc[t.class_name == c, "path"].head(per_class)])
            labels.append(f"{variant}: {arm}")
    return figures.image_grid(rows, labels, title=f"{params['DATASET']}: {per_class} per class, "
                              f"classes {', '.join(class_names)}", cell_inches=0.55)


def seed_rows(folder: Path) -> pd.DataFrame:
    """One row per metric and arm of every run of a results folder: ``folder, dataset, variant, seed, cpu, result,
    metric, arm, value`` (:func:`improve_lib.report.comparison.evaluation_rows` of the run's ``metrics.json``; ``cpu``
    is what notebook 04 recorded, e.g. ``AVX512+AMX+AVX512_BF16``; ``result`` the sha256 of the ``metrics.json``, the
    same when one run was condensed into two folders). A run scored on the test split is refused."""
    rows = []
    runs = sorted(p for p in (folder / "runs").glob("*") if (p / "metrics.json").is_file())
    if not runs:
        raise StudyInputError(f"{folder}/runs: no run with a metrics.json (a folder written by python -m improve_lib "
                              f"results from a screening sweep)")
    for run in runs:
        m, ev = manifest.load(run), _scored_on_validation(run, run / "metrics.json")
        base = {"folder": str(folder), "dataset": m["sweep"]["dataset"], "variant": m["sweep"]["point"]["RECIPE"],
                "seed": m["sweep"]["seed"], "cpu": results_folder.trained_with(m, "cpu_capability"),
                "result": sha256_file(run / "metrics.json")}
        rows += [{**base, **r} for r in comparison.evaluation_rows(ev)]
    return pd.DataFrame(rows)


def over_seeds(folders: list[Path], reference: str) -> dict[str, pd.DataFrame]:
    """Per dataset, one row per variant: its gap (real minus the better arm's TSTR F1) per seed and CPU and its
    mean, the reference's mean gap on the same seeds and CPUs, and the change against ``reference`` paired within a
    seed and CPU, mean and 95 % t interval over the pairs; KID and PRDC recall per arm, mean over the runs. A run
    found in two folders (the same ``metrics.json``, e.g. the reference of two sittings' sweeps) counts once; two
    different runs of one (variant, seed, CPU) are refused."""
    replicate = ["dataset", "variant", "seed", "cpu"]
    long = pd.concat([seed_rows(f) for f in folders], ignore_index=True)
    long = long.drop_duplicates([*replicate, "result", "metric", "arm"])
    runs = long.drop_duplicates([*replicate, "result"])
    twice = runs[runs.duplicated(replicate, keep=False)]
    if len(twice):
        (_, variant, seed, cpu), group = next(iter(twice.groupby(replicate, sort=False)))
        raise StudyInputError(f"variant {variant!r} seed {seed} on {cpu}: two different runs (their metrics.json "
                              f"differ) in {', '.join(sorted(set(group['folder'])))}; give one of them")
    # the preset's order of variants, as each sitting's sweep.yaml lists them
    order = list(dict.fromkeys([*(v for f in folders for v in (yaml.safe_load((f / "sweep.yaml").read_text())
                                                                .get("grid") or {}).get("RECIPE", [])),
                                *long["variant"]]))
    # a replicate is a seed on a CPU: the pairs below match both
    wide = long.pivot_table(index=replicate, columns=["metric", "arm"], values="value")
    f1 = wide["TSTR macro F1 %"]
    gap = (f1["real"] - f1[list(ARMS)].max(axis=1)).rename("gap")
    tables = {}
    for dataset, g in gap.groupby(level="dataset"):
        g = g.droplevel("dataset")
        if reference not in g.index.get_level_values("variant"):
            raise StudyInputError(f"{dataset}: no run of the reference variant {reference!r} in {folders}")
        ref = g.loc[reference]
        rows = []
        for variant in sorted(set(g.index.get_level_values("variant")), key=order.index):
            mine = g.loc[variant]
            paired = (mine - ref).dropna()
            mean, low, high = comparison.t_interval(paired.tolist())
            row = {"variant": variant, "seeds": ", ".join(f"{s} ({cpu})" for s, cpu in mine.index),
                   "gap per seed": " / ".join(f"{v:.1f}" for v in mine), "gap": mine.mean(),
                   # the gap moves with each seed's validation split: the reference's on the same seeds
                   "reference gap": ref.reindex(mine.index).mean(),
                   "change": mean, "low": low, "high": high, "paired seeds": len(paired)}
            for metric, short in (("KID", "KID"), ("recall %", "recall")):
                row.update({f"{short} {arm}": wide.loc[(dataset, variant), (metric, arm)].mean() for arm in ARMS})
            rows.append(row)
        tables[dataset] = pd.DataFrame(rows)
    return tables


def over_seeds_markdown(dataset: str, table: pd.DataFrame, reference: str) -> str:
    """The over-seeds table a README shows."""
    lines = [f"**{dataset}** (validation split; the change is paired with {reference} within each seed and CPU)", "",
             f"| variant | seeds (CPU) | gap per seed | gap, mean | {reference}'s gap, same seeds | change against "
             f"{reference}, mean [95 % t] | KID (b / p) | recall % (b / p) |", "|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        change = (f"{r['change']:+.1f}" + (f" [{r['low']:+.1f}, {r['high']:+.1f}]" if r["paired seeds"] > 1 else "")
                  if r["variant"] != reference else "-")
        lines.append(f"| {r['variant']} | {r['seeds']} | {r['gap per seed']} | {r['gap']:.1f} | "
                     f"{r['reference gap']:.1f} | {change} | {r['KID baseline']:.2f} / {r['KID prototype']:.2f} | "
                     f"{r['recall baseline']:.1f} / {r['recall prototype']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweeps", nargs="+", type=Path, help="finished screening sweep folders, one per dataset (with "
                    "--over-seeds: results folders of such sweeps, any datasets and seeds)")
    ap.add_argument("--over-seeds", action="store_true", help="the gap over the seeds of several results folders")
    ap.add_argument("--out", type=Path, required=True, help="folder for table.md and the sample figures")
    ap.add_argument("--reference", default="laptop", help="the variant the gap change is measured against")
    args = ap.parse_args(argv)
    if args.over_seeds:
        tables = over_seeds(args.sweeps, args.reference)
        text = "\n".join(over_seeds_markdown(d, t, args.reference) for d, t in tables.items())
        atomic_write_text(args.out / "over_seeds.md", text)
        print(text)
        return
    parts = []
    for sweep in args.sweeps:
        dataset, table = dataset_table(sweep, args.reference)
        parts.append(markdown(dataset, table))
        with atomic_path(args.out / f"{dataset}_samples.png") as tmp:
            sample_figure(sweep).savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    atomic_write_text(args.out / "table.md", "\n".join(parts))
    print("\n".join(parts))


if __name__ == "__main__":
    main()
