"""The synthetic-cell checker under the damage generated images carry: the README's curves.

    python tools/checker_robustness.py --resolution 32 64 --per-class 40 --seed 4545 --out results/checker_robustness

Per resolution: ``checker_scoring.robustness_curves`` (fresh renders of every class, perturbed by
Gaussian noise, blur, a blend toward grey and JPEG re-encoding, judged against their own class and
every other class), written as ``robustness_<R>px.csv/.md`` and ``robustness_<R>px.png``, with the
command and the verdict on the bar (own class >= 90 % at noise SD 8/255, other classes <= 20 %) in
``robustness.json``. Notebook 07 draws the same curves for its run (seed 4545 + SEED).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from improve_lib.core import manifest  # noqa: E402
from improve_lib.core.files import atomic_write_json, atomic_write_text  # noqa: E402
from improve_lib.plausibility import checker_scoring


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=int, nargs="+", default=[32, 64])
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--seed", type=int, default=4545, help="a seed not used to tune the checker (see validation_table)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    out = Path(args.out)
    record = {"command": "python tools/checker_robustness.py " + " ".join(sys.argv[1:] if argv is None else argv),
              **manifest.provenance(), "resolutions": {}}
    for res in args.resolution:
        started = time.perf_counter()
        curves = checker_scoring.robustness_curves(res, args.per_class, args.seed, progress=True)
        seconds = time.perf_counter() - started
        atomic_write_text(out / f"robustness_{res}px.csv", curves.to_csv(index=False, float_format="%.4g"))
        atomic_write_text(out / f"robustness_{res}px.md", curves.to_markdown(index=False, floatfmt=".1f") + "\n")
        fig = checker_scoring.robustness_figure(curves, f"Synthetic-cell checker under perturbation ({res} px, "
                                                     f"{args.per_class} per class)")
        fig.savefig(out / f"robustness_{res}px.png", dpi=100)
        verdict = checker_scoring.robustness_verdict(curves)
        record["resolutions"][str(res)] = {"verdict": verdict, "seconds": round(seconds, 1)}
        print(f"{res} px ({seconds:.0f} s):", verdict)
        print(curves.round(1).to_string(index=False))
    atomic_write_json(out / "robustness.json", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
