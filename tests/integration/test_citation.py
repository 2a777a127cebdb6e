"""CITATION.cff follows the Citation File Format 1.2.0 schema (the schema file beside this test comes from the
citation-file-format project, CC BY 4.0, as cffconvert 2.0.0 ships it; cffconvert itself needs jsonschema < 4,
which Jupyter cannot share), and it cites the paper and both datasets with their licenses."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMA = Path(__file__).with_name("cff_schema_1.2.0.json")


def test_citation_file_is_valid_cff_and_cites_the_paper_and_both_datasets():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(citation)
    titles = " ".join(r["title"] for r in citation["references"])
    assert "IMPROVE" in titles and "HAM10000" in titles and "Bone Marrow" in titles
    assert {r.get("license") for r in citation["references"]} >= {"CC-BY-NC-4.0", "CC-BY-4.0"}
    assert citation["license"] == "MIT" and (REPO / "LICENSE").read_text().startswith("MIT License")


def test_the_schema_check_can_fail():
    broken = {"cff-version": "1.2.0", "message": "x", "title": "y"}  # no authors
    try:
        jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(broken)
    except jsonschema.ValidationError as exc:
        assert "authors" in exc.message
    else:
        raise AssertionError("a CITATION.cff without authors passed the schema")


def test_the_model_card_and_the_report_cite_what_citation_cff_cites(tmp_path):
    """core.citation reads CITATION.cff: every reference (software, paper, both datasets with licenses) becomes a
    line of the model card's Citation section and of every report page's footer."""
    from improve_lib.core import citation
    from improve_lib.report import site

    lines = citation.references()
    assert len(lines) == 4 and "IMPROVE study" in lines[0] and "IMPROVE: Improving" in lines[1]
    assert "doi.org/10.1038/sdata.2018.161" in lines[2] and "CC-BY-NC-4.0" in lines[2] and "CC-BY-4.0" in lines[3]
    assert citation.references(tmp_path / "missing.cff") == [citation.FALLBACK]
    page = site._page("t", "<p>body</p>")
    assert all(line.split("*")[1] in page for line in lines[1:])  # each title, rendered in the footer
