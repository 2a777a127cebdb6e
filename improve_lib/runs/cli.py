"""``python -m improve_lib run ...``: the command line of the study."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from improve_lib.core.errors import StudyInputError
from improve_lib.diffusion import checkpoint_export
from improve_lib.plausibility.review import label_studio_server
from improve_lib.report import browser, results_folder, site
from improve_lib.runs import sweep_jobs, sweep
from improve_lib.runs.pipeline import StudyRunError, run_pipeline
from improve_lib.runs.profiles import parse_sets


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

    s = sub.add_parser("sweep", help="run a grid of runs (papermill), sharing upstream notebooks")
    s.add_argument("--preset", help="params/ablations/<PRESET>.yaml (flags below take precedence)")
    s.add_argument("--profile", help="params/<PROFILE>.yaml: smoke, demo, paper")
    s.add_argument("--dataset", help="synthetic | ham10000 | bone_marrow | dermamnist | bloodmnist")
    s.add_argument("--data-dir", help="folder holding the dataset (not needed for synthetic)")
    s.add_argument("--grid", action="append", default=[], metavar="KEY=v1,v2",
                   help="a parameter and its values (repeatable; the grid is every combination)")
    s.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default: the preset's, else 0)")
    s.add_argument("--variants", help="comma-separated names: only these of the preset's variants")
    s.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="a fixed override for every run (repeatable)")
    s.add_argument("--from", dest="from_nb", metavar="NN",
                   help="promise that the grid changes only notebooks NN and later (checked); earlier ones are shared")
    s.add_argument("--to", dest="to_nb", metavar="NN", help="stop each run after notebook NN")
    s.add_argument("--sweep-dir", help="sweep folder (default runs/sweeps/<preset> or <profile>-<dataset>-<keys>)")
    s.add_argument("--dry-run", action="store_true", help="print the runs and what each would share; run nothing")
    s.add_argument("--estimate-from", metavar="RUN_DIR", help="with --dry-run: estimate the time from a finished run")
    s.add_argument("--no-compare", action="store_true", help="do not render 08_compare_runs.ipynb at the end")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="grid points at once (processes here, or jobs queued with --executor slurm); default 1")
    s.add_argument("--executor", default="processes", choices=sweep_jobs.EXECUTORS,
                   help="processes (this machine), slurm (a job per grid point via submitit), submitit-local")
    s.add_argument("--slurm", dest="slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="a submitit setting for --executor slurm, e.g. slurm_partition=gpu gpus_per_node=1 timeout_min=240")

    c = sub.add_parser("compare", help="render 08_compare_runs.ipynb for a sweep folder")
    c.add_argument("sweep_dir", help="a folder written by `sweep`")

    e = sub.add_parser("results", help="condense a sweep folder into results/<name>/ for the repository")
    e.add_argument("sweep_dir", help="a folder written by `sweep`, compared (notebook 08)")
    e.add_argument("out_dir", help="e.g. results/recipe_ablation")
    e.add_argument("--command", dest="made_by", required=True, help="the command that made the sweep, written to COMMAND.md")
    e.add_argument("--check", dest="checks", action="append", default=[], metavar="SWEEP_DIR",
                   help="a sweep of the registration's check runs (second training seed on a replicate's split, "
                        "another training precision), kept under checks/ and read by SUMMARY.md; repeatable")

    w = sub.add_parser("report", help="a static web site of a run, sweep or results folder (opens from disk)")
    w.add_argument("path", help="a run folder, a sweep folder or a results folder")
    w.add_argument("--out", help="the site's folder (default runs/reports/<name of PATH>)")
    w.add_argument("--check", action="store_true", help="then open every page in headless Chromium (Playwright) and "
                   "fail on a page, image or link that does not load or a console error")
    w.add_argument("--screenshot", help="with --check: save the landing page as this PNG")
    x = sub.add_parser("export", help="export a training checkpoint as a diffusers pipeline folder (final/'s layout)")
    x.add_argument("run_dir", help="a run folder trained by notebook 04")
    x.add_argument("--arm", required=True, help="the arm's folder under models/: prototype | baseline | an ARM_NAME")
    x.add_argument("--step", type=int, help="which checkpoint-<step> (default: the latest complete one)")
    x.add_argument("--out", help="the pipeline folder to write (default models/<arm>/exports/step-<step>)")

    v = sub.add_parser("review", help="expert review outside the notebook")
    vs = v.add_subparsers(dest="tool", required=True)
    ls = vs.add_parser("label-studio", help="create the blinded review on a Label Studio server, or pull its annotations")
    ls.add_argument("action", choices=["push", "pull"], help="push: project, image storage, tasks; pull: annotations back")
    ls.add_argument("run_dir", help="a run folder with review tasks (notebook 07)")
    ls.add_argument("--url", help="the server (default: push $LABEL_STUDIO_URL or http://localhost:8080; pull the pushed one)")
    ls.add_argument("--token", default=os.environ.get("LABEL_STUDIO_API_KEY", ""),
                    help="your access token (default $LABEL_STUDIO_API_KEY, which keeps it out of the shell history)")
    ls.add_argument("--dataset", default="synthetic", help="push: whose criteria (synthetic | ham10000 | bone_marrow)")
    ls.add_argument("--document-root", help="push: the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (holds the run folder)")
    ls.add_argument("--reviewer", help="pull: the reviewer name the judgments are filed under")
    ls.add_argument("--completed-by", help="pull: the annotator's Label Studio user id or e-mail")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code. Ctrl-C and a file system that refuses a write (read-only,
    full, no permission) end with one line naming the cause instead of a traceback."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C): stopped; a run or sweep folder continues where it stopped with the same "
              "command (add --resume to a run)", file=sys.stderr)
        return 130
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot write or read{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "review":
        return _label_studio(args)
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "results":
        return _report("results", lambda: results_folder.write_results(args.sweep_dir, args.out_dir, args.made_by,
                                                                       checks=args.checks))
    if args.command == "export":
        return _report("pipeline folder",
                       lambda: checkpoint_export.export_checkpoint(args.run_dir, args.arm, args.step, args.out))
    if args.command == "report":
        out = args.out or Path("runs") / "reports" / Path(args.path).resolve().name
        code = _report("report", lambda: site.build_site(args.path, out))
        if code or not (args.check or args.screenshot):
            return code
        return _report("browser check", lambda: _browser_check(out, args.screenshot))
    if args.command == "compare":
        return _report("comparison", lambda: sweep.render_comparison(args.sweep_dir))
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


def _browser_check(site_dir: Path, screenshot: str | None) -> str:
    problems = browser.check_pages(site_dir, screenshot)
    if problems:
        raise StudyInputError(f"{len(problems)} problem(s) in {site_dir}:\n" + "\n".join(problems))
    return f"every page of {site_dir} loads in Chromium" + (f"; landing page -> {screenshot}" if screenshot else "")


def _report(what: str, action) -> int:
    """Run ``action`` and print ``what: <its result>``; a study error is printed instead, with exit code 2
    for bad input and 1 for a failed notebook."""
    try:
        print(f"{what}: {action()}")
    except (StudyInputError, StudyRunError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, StudyInputError) else 1
    return 0


def _label_studio(args) -> int:
    try:
        if args.action == "push":
            if not args.document_root:
                raise StudyInputError("push needs --document-root (the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)")
            url = args.url or os.environ.get("LABEL_STUDIO_URL") or "http://localhost:8080"
            record = label_studio_server.push(args.run_dir, args.dataset, url, args.token, args.document_root)
            print(f"Label Studio project {record['project']} with {record['tasks']} tasks: {record['project_url']}")
        else:
            if not args.reviewer:
                raise StudyInputError("pull needs --reviewer (the name the judgments are filed under)")
            rows = label_studio_server.pull(args.run_dir, args.reviewer, args.url, args.token,
                                            completed_by=args.completed_by)
            print(f"{len(rows)} judgment(s) appended to review/{args.reviewer}.csv")
    except StudyInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _sweep(args) -> int:
    try:
        preset = sweep.load_preset(args.preset) if args.preset else None
        spec = sweep.spec_from(preset, profile=args.profile, dataset=args.dataset, data_dir=args.data_dir,
                               grid=sweep.parse_grid(args.grid), seeds=args.seeds, sets=parse_sets(args.sets),
                               from_nb=args.from_nb, to_nb=args.to_nb, variants=args.variants)
        sweep_dir, outcomes = sweep.run_sweep(spec, args.sweep_dir, dry_run=args.dry_run,
                                              compare=not args.no_compare, progress=not args.no_progress,
                                              estimate_from=args.estimate_from, jobs=args.jobs, executor=args.executor,
                                              executor_settings=sweep_jobs.parse_settings(args.slurm))
    except StudyInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        return 0
    print(sweep.report(outcomes))
    print(f"sweep folder: {sweep_dir}")
    return 1 if any(o.status == "failed" for o in outcomes) else 0
