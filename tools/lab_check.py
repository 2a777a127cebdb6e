"""Run notebooks in a real JupyterLab from headless Chromium, top to bottom with their defaults, and
screenshot the last one. This is how the README's JupyterLab screenshot was made; it is not part of
the test suite because it needs a browser.

Needs Playwright (``pip install playwright`` in any environment; not a dependency of the study) and a
Chromium binary. Start JupyterLab first, e.g.::

    make lab LAB_ARGS="--no-browser --IdentityProvider.token=check --LabApp.expose_app_in_browser=True" \
        LAB_PORT=8899 &
    python tools/lab_check.py --url http://127.0.0.1:8899 --token check \\
        --out figures/jupyterlab_notebook_03.png 01_explore_data.ipynb 02_embeddings.ipynb 03_prototypes.ipynb

Each notebook is opened through the Lab UI (``/lab/tree/<name>``), run with Run > Run All Cells, and
checked: every code cell executed, no error output, the kernel is the project's ("improve-study"),
and progress bars rendered as widgets. A JSON report goes beside the screenshot.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
               "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage"]


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def run_notebook(page, url: str, token: str, name: str, timeout_s: int) -> dict:
    t0 = time.time()
    # ?reset: a fresh workspace, so that only this notebook is open (Lab restores earlier tabs otherwise)
    page.goto(f"{url}/lab/tree/{name}?reset&token={token}", wait_until="domcontentloaded", timeout=120_000)
    page.wait_for_function("() => !!window.jupyterapp", timeout=120_000)
    page.wait_for_function("""(name) => { const w = window.jupyterapp.shell.currentWidget;
        return w && w.context && w.context.path.endsWith(name); }""", arg=name, timeout=120_000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=180_000)
    page.add_style_tag(content=".Toastify, .Toastify__toast-container {display:none !important}")
    page.wait_for_function("""() => {
        const w = window.jupyterapp.shell.currentWidget;
        return w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel &&
               w.sessionContext.session.kernel.status === 'idle'; }""", timeout=180_000)
    kernel = page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.kernelDisplayName")
    log(name, "kernel idle:", kernel)
    page.evaluate("""() => { const s = window.jupyterapp.shell; if (!s.leftCollapsed) s.collapseLeft();
                            if (!s.rightCollapsed) s.collapseRight(); }""")
    page.locator(".lm-MenuBar-itemLabel:text-is('Run')").click(timeout=10_000)
    page.locator(".lm-Menu-itemLabel:text-is('Run All Cells')").click(timeout=10_000)
    time.sleep(3)
    page.wait_for_function("""() => {
        const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent);
        const k = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
        return prompts.length > 0 && prompts.every(t => /\\[\\d+\\]/.test(t)) && k.status === 'idle'; }""",
                           timeout=timeout_s * 1000, polling=1000)
    errors = page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']").all_inner_texts()
    widgets = page.locator(".jp-OutputArea-output .widget-hprogress, .jp-OutputArea-output .widget-progress").count()
    cells = page.locator(".jp-CodeCell").count()
    info = {"notebook": name, "kernel": kernel, "code_cells": cells, "errors": [e[:800] for e in errors],
            "progress_widgets": widgets, "seconds": round(time.time() - t0, 1)}
    log(json.dumps(info))
    return info


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="+", help="notebook names in the Lab root, run in this order")
    p.add_argument("--url", default="http://127.0.0.1:8888")
    p.add_argument("--token", default="")
    p.add_argument("--out", required=True, help="PNG screenshot of the last notebook")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per notebook")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    report = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=CHROME_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.on("console", lambda m: m.type == "error" and log("console error:", m.text[:200]))
        for name in args.notebooks:
            report.append(run_notebook(page, args.url, args.token, name, args.timeout))
        # frame the last notebook on its first progress bar, if any
        bar = page.locator(".jp-OutputArea-output .widget-hprogress").first
        if bar.count():
            bar.evaluate("e => e.closest('.jp-Cell').scrollIntoView({block: 'center'})")
        time.sleep(1.5)
        page.mouse.move(5, 990)
        page.screenshot(path=args.out)
        browser.close()
    with open(args.out.rsplit(".", 1)[0] + ".json", "w") as fh:
        json.dump(report, fh, indent=1)
    ok = all(not r["errors"] and "improve-study" in r["kernel"] for r in report)
    log("all notebooks ran without errors on the project kernel" if ok else "PROBLEMS: see the report")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
