"""The README's figures are the ones the code wrote."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_demo_figures_are_the_results_file_demo_sh_writes():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- demo-results:start -->\n", 1)[1].split("<!-- demo-results:end -->", 1)[0]
    assert block == (ROOT / "docs" / "demo_results.md").read_text()
