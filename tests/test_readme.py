"""The README's figures are the ones the code wrote."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- results: (\S+) -->\n(.*?)<!-- end results -->", re.S)


def test_every_results_block_of_the_readme_is_the_file_the_code_wrote():
    blocks = BLOCK.findall((ROOT / "README.md").read_text())
    assert any(name == "docs/demo_results.md" for name, _ in blocks)
    for name, content in blocks:
        assert content == (ROOT / name).read_text(), f"README block differs from {name}: paste the file again"
