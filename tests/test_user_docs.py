"""README.md and docs/ speak to users: no development notes, no files outside the repository,
and the settings table names every environment variable the code reads."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FORBIDDEN = {
    r"\.\./shared": "a folder outside the repository",
    r"shared/docs": "a file outside the repository",
    r"bsrn-reference": "an internal reference document",
    r"reference §": "an internal reference document",
    r"(?<!repository's )issue #\d": "an internal issue",
    r"\b(this|the|that|last|a) session\b": "a development session",
    r"\b(another|other|the) (helpers?|agents?)\b": "who did the work",
    r"\b(was|were|is|be) lent\b|lent machine": "lent machines",
    r"\bshared (machine|CPU|cores)\b": "what else ran on the machine",
}


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_no_development_notes(path):
    text = path.read_text(encoding="utf-8")
    problems = [f"{path.name}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)!r} ({why})"
                for pattern, why in FORBIDDEN.items()
                for m in re.finditer(pattern, text, flags=re.IGNORECASE)]
    assert not problems, "\n".join(problems)


def test_readme_settings_table_names_every_environment_variable():
    used = set()
    for f in (ROOT / "src" / "bsrn").rglob("*.py"):
        used |= set(re.findall(r"environ(?:\.get)?\(\s*[\"']([A-Z_]+)[\"']", f.read_text()))
        used |= set(re.findall(r"environ\[[\"']([A-Z_]+)[\"']\]", f.read_text()))
        used |= set(re.findall(r"getenv\(\s*[\"']([A-Z_]+)[\"']", f.read_text()))
    used |= {"BSRN_SHARED"}  # read by the tests
    readme = ROOT / "README.md"
    table = readme.read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    missing = sorted(v for v in used if f"`{v}`" not in table)
    assert not missing, f"not in the README's settings table: {missing}"
