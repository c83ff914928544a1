"""LICENSE and CITATION.cff: the licence is MIT with the upstream notices, and the citation file is
valid CFF 1.2.0 that names the paper and this package's own version.

CITATION.cff is read with PyYAML, which every install has: timm, a pinned dependency, requires it.
"""
from __future__ import annotations

import re

import yaml

from conftest import REPO

# The keys CFF 1.2.0 requires at the top level and in a reference (schema.json "required").
CFF_REQUIRED = {"cff-version", "message", "title", "authors"}
REFERENCE_REQUIRED = {"type", "title", "authors"}
PAPER_AUTHORS = ["Baranchuk", "Rubachev", "Voynov", "Khrulkov", "Babenko"]


def citation() -> dict:
    return yaml.safe_load((REPO / "CITATION.cff").read_text())


def test_citation_is_cff_1_2_0_and_cites_the_paper():
    cff = citation()
    assert CFF_REQUIRED <= set(cff) and cff["cff-version"] == "1.2.0"
    paper = cff["preferred-citation"]
    assert REFERENCE_REQUIRED <= set(paper) and paper["type"] == "conference-paper"
    assert paper["title"] == "Label-Efficient Semantic Segmentation with Diffusion Models"
    assert [a["family-names"] for a in paper["authors"]] == PAPER_AUTHORS
    assert paper["year"] == 2022 and "ICLR" in paper["conference"]["name"]
    for ref in cff["references"]:
        assert REFERENCE_REQUIRED <= set(ref), ref


def test_citation_version_and_licence_are_the_packages():
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)
    cff = citation()
    assert str(cff["version"]) == version
    assert cff["license"] == "MIT"


def test_licence_is_mit_and_keeps_the_upstream_notices():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the ddpm-seg authors\n")
    assert "Copyright (c) 2021 Yandex Research" in text and "Copyright (c) 2021 OpenAI" in text
