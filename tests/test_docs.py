"""README.md and docs/*.md hold no template leftovers, no pointers outside the repository, no broken
relative links, and the embedded models' stated size is their real size. Failures name file:line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: ALL_CAPS_WITH_UNDERSCORES words in prose (outside code spans) are template placeholders such as
#: SIZE_MB; environment variables and constants belong in backticks.
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
MARKERS = re.compile(r"\b(?:TODO|TBD|XXX|FIXME)\b|\{\{|\}\}|<placeholder>|lorem ipsum", re.IGNORECASE)
OUTSIDE = re.compile(r"\.\./shared|/work/|\bDESIGN\.md\b|\bSTYLE\.md\b")
LINK = re.compile(r"\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`]*`")


def doc_lines(path: Path):
    """``(line number, line, inside a fenced code block)`` of a Markdown file."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            yield number, line, True
            continue
        yield number, line, fenced


def findings(path: Path, root: Path = REPO) -> list[str]:
    """Every problem of one file, each as ``file:line: what``."""
    name = path.relative_to(root)
    found = []
    for number, line, fenced in doc_lines(path):
        where = f"{name}:{number}"
        for match in MARKERS.finditer(line):
            found.append(f"{where}: template marker {match.group(0)!r}")
        for match in OUTSIDE.finditer(line):
            found.append(f"{where}: points outside the repository ({match.group(0)!r})")
        if fenced:
            continue
        prose = INLINE_CODE.sub("", line)
        for match in PLACEHOLDER.finditer(prose):
            found.append(
                f"{where}: placeholder-like {match.group(0)!r} outside code (use backticks for names)"
            )
        for match in LINK.finditer(prose):
            target = match.group(1).split("#", 1)[0]
            if target and "://" not in target and not target.startswith("mailto:"):
                if not (path.parent / target).exists():
                    found.append(f"{where}: link to {target!r}, which does not exist")
    return found


@pytest.mark.parametrize("path", DOCS, ids=[str(p.relative_to(REPO)) for p in DOCS])
def test_no_template_tokens_or_outside_pointers(path):
    problems = findings(path)
    assert not problems, "\n".join(problems)


def test_checks_catch_what_they_claim(tmp_path):
    bad = tmp_path / "bad.md"
    bad.write_text(
        "Weights: SIZE_MB MB in total. TODO: measure.\n"
        "See ../shared/DESIGN.md and {{ value }}.\n"
        "`MTCOLOR_SLOW=1` in backticks is fine, and [a link](missing.md) is not.\n"
        "```\nPLACEHOLDER_IN_CODE is fine here\n```\n",
        encoding="utf-8",
    )
    text = "\n".join(findings(bad, root=tmp_path))
    assert "bad.md:1: placeholder-like 'SIZE_MB'" in text
    assert "bad.md:1: template marker 'TODO'" in text
    assert "bad.md:2: points outside the repository ('../shared')" in text
    assert "bad.md:2: template marker '{{'" in text
    assert "bad.md:3: link to 'missing.md'" in text
    assert "MTCOLOR_SLOW" not in text and "PLACEHOLDER_IN_CODE" not in text


def test_readme_states_the_embedded_weights_real_size():
    weights = sorted((REPO / "mtcolor" / "embedded").rglob("*.safetensors"))
    assert weights, "no embedded weights found"
    megabytes = sum(path.stat().st_size for path in weights) / 1e6
    stated = re.search(r"([\d.]+) MB of safetensors weights in total", (REPO / "README.md").read_text())
    assert stated, "README.md no longer states the embedded models' size"
    assert float(stated.group(1)) == pytest.approx(megabytes, abs=0.05), (
        f"README.md states {stated.group(1)} MB; the embedded safetensors files hold {megabytes:.1f} MB"
    )
