"""The report site (improve_lib.report.site): every page of a run's and a results folder's site parses, every link
and image it names exists in the site, and nothing is fetched from the network."""
from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from improve_lib.core.errors import StudyInputError
from improve_lib.report import browser, site
from improve_lib.runs.cli import main

RESULTS = Path(__file__).resolve().parents[2] / "results"


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("href", "src") and tag in ("a", "img", "script", "link"):
                self.refs.append((tag, key, value))


def check_site(root: Path) -> int:
    """Parse every page; fail on a broken local link or image, a network reference, an empty script source."""
    pages = sorted(root.rglob("*.html"))
    assert pages and (root / "index.html") in pages
    for page in pages:
        parser = _Refs()
        parser.feed(page.read_text(encoding="utf-8"))
        for tag, key, value in parser.refs:
            url = urlparse(value or "")
            assert value, f"{page}: <{tag} {key}=\"\"> (a browser would load the page itself)"
            if url.scheme in ("http", "https"):
                assert tag == "a", f"{page}: <{tag}> loads {value} from the network"
                continue
            if url.scheme in ("data", "mailto") or value.startswith("#"):
                continue
            target = (page.parent / unquote(url.path)).resolve()
            assert target.is_file(), f"{page}: {tag} {key}={value} does not exist"
            assert root.resolve() in target.parents, f"{page}: {value} points outside the site"
    return len(pages)


def test_the_site_of_a_run_shows_every_notebook_and_the_manifest(smoke_synthetic_run, tmp_path):
    index = site.build_site(smoke_synthetic_run, tmp_path / "site")
    assert check_site(tmp_path / "site") == 2 + 7  # index, manifest and the seven executed notebooks
    text = index.read_text(encoding="utf-8")
    assert "Train on synthetic, test on real" in text and "05_samples_prototype.png" in text
    manifest_page = (tmp_path / "site" / "manifest.html").read_text(encoding="utf-8")
    assert "git commit" in manifest_page and "GUIDANCE_SCALE" in manifest_page and "torch" in manifest_page
    evaluate = (tmp_path / "site" / "notebooks" / "06_evaluate.html").read_text(encoding="utf-8")
    assert "data:image/png;base64" in evaluate  # the figures are in the page


@pytest.mark.parametrize("name", ["ham10000", "bone_marrow"])
def test_the_site_of_a_committed_results_folder(name, tmp_path):
    assert main(["report", str(RESULTS / name), "--out", str(tmp_path / "site")]) == 0
    n = check_site(tmp_path / "site")
    runs = sorted(p.name for p in (RESULTS / name / "runs").iterdir() if p.is_dir())
    assert n == 1 + 2 * len(runs)
    assert "Prototype minus baseline" in (tmp_path / "site" / "index.html").read_text(encoding="utf-8")


def test_the_site_never_replaces_a_folder_with_the_users_files(smoke_synthetic_run, tmp_path):
    out = tmp_path / "site"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(StudyInputError, match="mine.txt"):
        site.build_site(smoke_synthetic_run, out)
    assert (out / "mine.txt").read_text() == "keep"
    with pytest.raises(StudyInputError, match="inside"):
        site.build_site(smoke_synthetic_run, smoke_synthetic_run / "site")
    with pytest.raises(StudyInputError, match="not a run folder"):
        site.build_site(tmp_path, tmp_path / "elsewhere")


@pytest.mark.skipif(browser.chromium_path() is None, reason="no Chromium on this machine (apt-get install chromium; "
                    ".ci/run installs it)")
def test_every_page_loads_in_headless_chromium(smoke_synthetic_run, tmp_path):
    """The sites of the smoke run and of results/ham10000, opened page by page in headless Chromium: no page, image
    or link that fails to load, no console error; the landing page's screenshot is written; a broken page is caught."""
    from PIL import Image

    site.build_site(smoke_synthetic_run, tmp_path / "run_site")
    assert browser.check_pages(tmp_path / "run_site") == []
    shot = tmp_path / "landing.png"
    assert main(["report", str(RESULTS / "ham10000"), "--out", str(tmp_path / "results_site"), "--check",
                 "--screenshot", str(shot)]) == 0
    assert Image.open(shot).size == (browser.SCREENSHOT["width"], browser.SCREENSHOT["height"])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "index.html").write_text("<img src='missing.png'><a href='gone.html'>x</a><script>console.error('boom')</script>")
    problems = "\n".join(browser.check_pages(bad))
    assert "missing.png" in problems and "gone.html" in problems and "boom" in problems
