"""The README's and the docs' figures are the ones the code wrote."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- results: (\S+) -->\n(.*?)<!-- end results -->", re.S)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_embeds_the_demo_results():
    assert any(name == "docs/demo_results.md" for name, _ in BLOCK.findall((ROOT / "README.md").read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_results_block_is_the_file_the_code_wrote(page):
    for name, content in BLOCK.findall(page.read_text()):
        assert content == (ROOT / name).read_text(), f"{page.name}: block differs from {name}: paste the file again"


def test_every_link_to_a_local_file_resolves():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name}: link to {target} does not resolve"
