"""The repository's promises to a new user: the README's commands are the ones CI runs, the README stays
short, and every relative link between the README and docs/ leads to a file that exists."""
import re

from conftest import ROOT

README_MAX_LINES = 220
# [text](target) and ![alt](target); the text may wrap over lines, the target may carry a "title"
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
EXTERNAL = ("http://", "https://", "mailto:", "ftp://")


def pages():
    """README.md and every docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(text):
    """The relative link targets of a markdown text, anchors cut off; code blocks and code spans are not links."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    targets = []
    for match in LINK.finditer(prose):
        target = match.group("target")
        if target.startswith(EXTERNAL) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def broken_links(path):
    """'page: target' for every relative link of the page whose target is missing."""
    return [f"{path.relative_to(ROOT).as_posix()}: {target}" for target in relative_links(path.read_text())
            if not (path.parent / target).exists()]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci_command = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
                  if "pytest" in line]
    assert len(ci_command) == 1 and ci_command[0] in readme.splitlines()
    assert "pip install -r requirements.txt && python mnist/run.py --demo" in readme


def test_generated_files_are_ignored():
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert {"/data/", "/runs/", "*.pt"} <= set(ignored)


def test_readme_is_at_most_220_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/*.md"


def test_the_link_reader_finds_links_and_skips_code_and_external_ones():
    text = ("See [the data](docs/data.md#dvs128-gesture), ![a figure](results/figures/x.png) and\n"
            "[a link whose text\nwraps](docs/outputs.md \"title\"); not [web](https://example.org), "
            "[here](#anchor), `[code](span.md)` or\n```\n[fenced](block.md)\n```\n")
    assert relative_links(text) == ["docs/data.md", "results/figures/x.png", "docs/outputs.md"]


def test_every_relative_link_in_the_readme_and_docs_points_to_an_existing_file():
    found = {path.name: relative_links(path.read_text()) for path in pages()}
    assert len(found) > 1 and len(found["README.md"]) >= 10  # the reader really sees the pages' links
    broken = [line for path in pages() for line in broken_links(path)]
    assert broken == [], "links to missing files:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme_and_links_back():
    readme_targets = set(relative_links((ROOT / "README.md").read_text()))
    docs = sorted((ROOT / "docs").glob("*.md"))
    assert docs, "docs/ holds no pages"
    for page in docs:
        lines = page.read_text().splitlines()
        name = page.relative_to(ROOT).as_posix()
        assert lines[0].startswith("# "), f"{name} does not start with a one-line title"
        assert "../README.md" in relative_links("\n".join(lines[:5])), f"{name} has no link back to the README"
        assert name in readme_targets, f"the README does not link to {name}"
