"""``python -m improve_lib run ...``: the command line of the study."""
from __future__ import annotations

import argparse
import sys

from .errors import StudyInputError
from .pipeline import StudyRunError, run_pipeline


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used by the README's usage text)."""
    p = argparse.ArgumentParser(prog="python -m improve_lib", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="execute the notebook pipeline into a run folder")
    r.add_argument("--profile", required=True, help="params/<PROFILE>.yaml: smoke, demo, paper")
    r.add_argument("--dataset", help="synthetic | ham10000 | bone_marrow | dermamnist | bloodmnist")
    r.add_argument("--data-dir", help="folder holding the dataset (not needed for synthetic)")
    r.add_argument("--run-dir", help="run folder (default runs/<profile>-<dataset>-seed<SEED>-<time>)")
    r.add_argument("--only", help="comma-separated notebook numbers, e.g. 01,02")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter (repeatable); VALUE is parsed as YAML")
    r.add_argument("--resume", action="store_true", help="continue a run folder, skipping finished notebooks")
    r.add_argument("--force", action="store_true", help="start over in a non-empty run folder")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    from .pipeline import parse_sets

    args = build_parser().parse_args(argv)
    try:
        run_dir = run_pipeline(
            args.profile, dataset=args.dataset, data_dir=args.data_dir, run_dir=args.run_dir,
            only=args.only.split(",") if args.only else None, sets=parse_sets(args.sets),
            resume=args.resume, force=args.force, progress=not args.no_progress,
        )
    except (StudyInputError, StudyRunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, StudyInputError) else 1
    print(f"run folder: {run_dir}")
    return 0
