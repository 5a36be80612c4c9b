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


def test_the_readme_figures_come_from_the_run_that_wrote_its_results():
    """docs/ figures shown in the README and on the demo page carry the commit (PNG text) of
    docs/demo_results.md's run, as does its details file."""
    from PIL import Image

    header = (ROOT / "docs" / "demo_results.md").read_text().splitlines()[0]
    commit = re.search(r"commit (\w+)", header).group(1)
    assert commit in (ROOT / "docs" / "demo_results_details.md").read_text().splitlines()[0]
    shown = re.findall(r"!\[[^\]]*\]\((docs/[a-z_]+\.png)\)", (ROOT / "README.md").read_text())
    shown += [
        "docs/" + name for name in re.findall(r"!\[[^\]]*\]\(([a-z_]+\.png)\)", (ROOT / "docs" / "DEMO.md").read_text())
    ]
    evaluation = [p for p in shown if not p.endswith("preview_sperm18.png")]  # the preview is the generator's
    assert len(evaluation) >= 6
    for path in evaluation:
        assert Image.open(ROOT / path).text.get("Comment") == f"commit {commit}", f"{path} is not from that run"


def test_every_file_in_docs_is_referenced():
    """No orphans: each file in docs/ is named by a page, a script or the code that writes it."""
    sources = [ROOT / "README.md", ROOT / "demo.sh", *(ROOT / "docs").glob("*.md"), *ROOT.glob("*.py")]
    text = "\n".join(path.read_text() for path in sources)
    for path in (ROOT / "docs").iterdir():
        others = text.replace(path.read_text(errors="ignore"), "") if path.suffix == ".md" else text
        assert f"docs/{path.name}" in others or f"({path.name})" in others, f"docs/{path.name} is referenced nowhere"


PROGRAMS = ("demo.sh", "train.py", "fuse.py", "evaluate.py", "benchmark.py")


def readme_commands() -> list[list[str]]:
    """Every spermfuse command line of the README's bash blocks (comments and && chains split off)."""
    import shlex

    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            for part in line.split("&&"):
                words = shlex.split(part.strip()) if part.strip() else []
                if any(word in PROGRAMS for word in words[:2]):
                    commands.append(words)
    return commands


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: " ".join(c)[:60])
def test_every_readme_command_parses_with_its_programs_own_parser(command, monkeypatch):
    """A UX check by machine: the flags the README types exist (the programs' parsers refuse
    unknown or abbreviated ones)."""
    import importlib

    monkeypatch.syspath_prepend(str(ROOT))
    words = command[command.index("train.py") :] if "torchrun" in command else command
    if words[0] == "bash" and words[1] == "demo.sh":
        known = set(re.findall(r"^\s+(--[a-z0-9-]+)\)", (ROOT / "demo.sh").read_text(), re.M))
        assert {w for w in words[2:] if w.startswith("--")} <= known
        return
    if words[0] == "python":
        words = words[1:]
    program = importlib.import_module(words[0][:-3])
    program.parse_args(words[1:])  # SystemExit (a failure here) on any unknown flag
