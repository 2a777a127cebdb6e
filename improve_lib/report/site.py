"""A study as a static web site: ``python -m improve_lib report PATH [--out DIR]`` (and ``make report``).

The people a study is shared with (a reviewer, a clinician judging samples, a workshop's students) open a web
page, not a Jupyter environment. :func:`build_site` turns a run folder, a sweep folder or a committed results
folder into pages that open from disk without a server or network:

* ``index.html``: the question, the verdict and its numbers (a results folder's ``SUMMARY.md``, a sweep's
  comparison of notebook 08, a run's TSTR table and its paired comparison), the sample grids beside the real
  images, links to every other page;
* ``notebooks/<name>.html``: each executed notebook rendered by nbconvert (Jupyter's own renderer) with its
  figures embedded; the CDN script tags nbconvert's template would load (MathJax, require.js) are left out,
  so nothing is fetched from the network;
* ``manifest.html`` per run: commit, package versions, parameters, notebook times and the input hashes;
* per run of a sweep or results folder, ``runs/<name>/`` with the same pages.

The site is written whole into ``DIR`` (built beside it and swapped in: :func:`improve_lib.core.folders.building`),
so a folder holding anything this tool did not write is refused, never emptied.
"""
from __future__ import annotations

import functools
import html
import json
import re
import shutil
from pathlib import Path

import mistune
import nbformat
import pandas as pd
import yaml
from nbconvert import HTMLExporter

from improve_lib.core import citation, folders, manifest
from improve_lib.core.errors import StudyInputError

QUESTION = ("Do class embeddings learned as prototypes (CPL) on image embeddings and then frozen make a class-conditional "
            "diffusion model whose samples are more useful and more plausible than randomly initialised, trained class "
            "embeddings with classifier-free guidance? (IMPROVE; measured here by training a classifier on each arm's "
            "samples and testing it on real images.)")
STYLE = ("body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
         "table{border-collapse:collapse;margin:1rem 0;display:block;overflow-x:auto;max-width:100%}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}"
         "img{max-width:100%}.grids{display:flex;flex-wrap:wrap;gap:1rem}.grids figure{margin:0;max-width:30rem}"
         "code{background:#f4f4f4;padding:0 .2rem}nav a{margin-right:1rem}")
_markdown = mistune.create_markdown(plugins=["table"], escape=False)
_EMPTY_SCRIPT = re.compile(r"<script[^>]*\bsrc=\"\"[^>]*>\s*</script>")


def kind(path: Path) -> str:
    """``run``, ``sweep`` or ``results``: what the folder at ``path`` is; raises naming what it lacks."""
    if (path / "COMMAND.md").is_file() and (path / "runs").is_dir():
        return "results"
    if (path / "sweep.yaml").is_file() and (path / "runs.csv").is_file():
        return "sweep"
    if manifest.load(path).get("written_by") == manifest.WRITTEN_BY:
        return "run"
    raise StudyInputError(f"{path}: not a run folder (no manifest.json of this project), a sweep folder (sweep.yaml, "
                          f"runs.csv) or a results folder (COMMAND.md, runs/)")


def _page(title: str, body: str, depth: int = 0) -> str:
    home = "../" * depth + "index.html"
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><nav><a href=\"{home}\">study</a></nav><h1>{html.escape(title)}</h1>"
            f"{body}<hr><small>{_citations()}<p>Written by <code>python -m improve_lib report</code>.</p></small></body></html>")


@functools.lru_cache(maxsize=1)
def _citations() -> str:
    """How to cite, from CITATION.cff (core.citation): the software, the paper, the datasets with their licenses."""
    return "<p>How to cite:</p>" + _markdown("\n".join(f"- {line}" for line in citation.references()))


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                               for k, v in rows) + "</table>"


def _manifest_page(m: dict) -> str:
    git = m.get("git") or {}
    stages = [(nb, f"{st.get('status')}, {float(st.get('seconds') or 0) / 60:.1f} min") for nb, st in
              sorted((m.get("stages") or {}).items())]
    inputs = sorted((m.get("inputs") or {}).items())
    facts_04 = (m.get("facts") or {}).get("04_train_diffusion", {})
    return ("<h2>Provenance</h2>" + _table([("git commit", git.get("commit", "")), ("uncommitted changes", git.get("dirty")),
                                          ("python", m.get("python", "")), ("platform", m.get("platform", "")),
                                          ("torch threads", m.get("torch_threads", "")),
                                          ("training precision", json.dumps(facts_04.get("mixed_precision", {}))),
                                          ("CPU", json.dumps(facts_04.get("cpu_capability", {}))),
                                          ("started", m.get("started", "")), ("finished", m.get("finished", ""))])
            + "<h2>Notebooks</h2>" + _table(stages)
            + "<h2>Parameters</h2>" + _table(sorted((k, json.dumps(v)) for k, v in (m.get("params") or {}).items()))
            + "<h2>Package versions</h2>" + _table(sorted((m.get("packages") or {}).items()))
            + f"<h2>Inputs ({len(inputs)} files, sha256)</h2>" + _table(inputs[:200])
            + (f"<p>… and {len(inputs) - 200} more in manifest.json.</p>" if len(inputs) > 200 else ""))


def _notebook_html(path: Path) -> str:
    exporter = HTMLExporter(template_name="lab", embed_images=True, mathjax_url="", require_js_url="", jquery_url="")
    nb = nbformat.read(str(path), as_version=4)
    # Saved widget state (the progress bars) makes the template load the widget renderer from unpkg.com at view time;
    # offline it fails with a console error, and each bar's text output is shown without it.
    nb.metadata.pop("widgets", None)
    body, _ = exporter.from_notebook_node(nb)
    return _EMPTY_SCRIPT.sub("", body)  # the CDN scripts, emptied above: a page that fetches nothing


def _grids(src: Path, out: Path, names: list[str]) -> str:
    """Copy the figures of ``src`` named ``names`` (that exist) to ``out`` and return them as a row of figures."""
    shown = []
    for name in names:
        for folder in (src, src / "figures"):
            if (folder / name).is_file():
                out.mkdir(parents=True, exist_ok=True)
                shutil.copy2(folder / name, out / name)
                shown.append(f"<figure><img src=\"{html.escape(name)}\" alt=\"{html.escape(name)}\">"
                             f"<figcaption>{html.escape(name)}</figcaption></figure>")
                break
    return f"<div class=\"grids\">{''.join(shown)}</div>" if shown else ""


SAMPLE_FIGURES = ["01_image_grid.png", "05_samples_baseline.png", "05_samples_prototype.png", "06_tstr.png"]


def _run_pages(run: Path, out: Path, depth: int) -> str:
    """Pages of one run (folder or a results folder's copy) in ``out``; returns its section for a parent page."""
    m = manifest.load(run)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.html").write_text(_page(f"{run.name}: manifest", _manifest_page(m), depth), encoding="utf-8")
    links = ["<a href=\"manifest.html\">manifest</a>"]
    for nb in sorted((run / "notebooks").glob("*.ipynb")) if (run / "notebooks").is_dir() else []:
        (out / "notebooks").mkdir(exist_ok=True)
        (out / "notebooks" / f"{nb.stem}.html").write_text(_notebook_html(nb), encoding="utf-8")
        links.append(f"<a href=\"notebooks/{nb.stem}.html\">{nb.stem}</a>")
    body = "<p>" + " · ".join(links) + "</p>"
    tstr = run / "tables" / "tstr.md"
    if tstr.is_file():
        body += "<h2>Train on synthetic, test on real</h2>" + _markdown(tstr.read_text(encoding="utf-8"))
    metrics = run / "metrics" / "metrics.json" if (run / "metrics").is_dir() else run / "metrics.json"
    comparison = (json.loads(metrics.read_text()).get("tstr") or {}).get("comparison") if metrics.is_file() else None
    if comparison:
        body += (f"<p>Prototype − baseline macro F1 within this run: {100 * comparison['diff']:+.1f} points "
                 f"[{100 * comparison['low']:+.1f}, {100 * comparison['high']:+.1f}] (paired bootstrap over the real "
                 f"test images and classifier seeds, p = {comparison['p_value']:.3f}); one run names no winner.</p>")
    body += "<h2>Samples beside real images</h2>" + _grids(run, out, SAMPLE_FIGURES)
    (out / "index.html").write_text(_page(run.name, f"<p>{QUESTION}</p>" + body, depth), encoding="utf-8")
    return f"<li><a href=\"runs/{html.escape(run.name)}/index.html\">{html.escape(run.name)}</a></li>"


def _collection_page(path: Path, out: Path, what: str) -> None:
    body = f"<p>{QUESTION}</p>"
    if what == "results":
        summary = path / "SUMMARY.md"
        if summary.is_file():
            for img in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", summary.read_text(encoding="utf-8")):
                if (path / img).is_file():
                    shutil.copy2(path / img, out / img)
            body += _markdown(summary.read_text(encoding="utf-8"))
        body += "<h2>How these results were made</h2>" + _markdown((path / "COMMAND.md").read_text(encoding="utf-8"))
        runs = sorted(p for p in (path / "runs").iterdir() if p.is_dir())
    else:
        spec = yaml.safe_load((path / "sweep.yaml").read_text()) or {}
        body += _table([(k, json.dumps(spec.get(k))) for k in ("profile", "dataset", "grid", "seeds", "set")])
        for name in ("comparison/verdict.md", "comparison/table.md"):
            if (path / name).is_file():
                body += _markdown((path / name).read_text(encoding="utf-8"))
        if (path / "comparison" / "comparison.png").is_file():
            shutil.copy2(path / "comparison" / "comparison.png", out / "comparison.png")
            body += "<img src=\"comparison.png\" alt=\"comparison\">"
        compared = next((p for p in (path / "08_compare_runs.ipynb", path / "notebooks" / "08_compare_runs.ipynb")
                         if p.is_file()), None)  # `compare` writes it at the sweep folder's top
        if compared is not None:
            (out / "08_compare_runs.html").write_text(_notebook_html(compared), encoding="utf-8")
            body += "<p><a href=\"08_compare_runs.html\">notebook 08, executed</a></p>"
        names = set(pd.read_csv(path / "runs.csv", dtype=str)["run"])
        runs = sorted(p for p in path.iterdir() if p.is_dir() and p.name in names)
    items = [_run_pages(run, out / "runs" / run.name, 2) for run in runs]
    body += "<h2>Each replicate</h2><ul>" + "".join(items) + "</ul>"
    (out / "index.html").write_text(_page(f"{path.name}: {what} folder", body), encoding="utf-8")


def build_site(path: str | Path, out: str | Path) -> Path:
    """Write the site of the run, sweep or results folder at ``path`` into ``out`` (see the module docstring);
    returns ``out / "index.html"``."""
    path, out = Path(path).resolve(), Path(out)
    if not path.is_dir():
        raise StudyInputError(f"{path} is not a folder")
    what = kind(path)
    if out.resolve() == path or path in out.resolve().parents:
        raise StudyInputError(f"--out {out} lies inside {path}: the site would become part of what it shows")
    with folders.building(out, "python -m improve_lib report") as tmp:
        if what == "run":
            _run_pages(path, tmp, 0)
        else:
            _collection_page(path, tmp, what)
    return out / "index.html"
