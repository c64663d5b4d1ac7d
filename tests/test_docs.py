"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one file run in order in one namespace, in a fresh temporary folder (so a later block may use
what an earlier one made). A block that cannot run here (it needs a download) is preceded by the line
``<!-- docs-test: skip (reason) -->``; it is still compiled, reported as a warning, and such blocks stay few.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"^<!-- docs-test: skip \((?P<reason>[^)]+)\) -->$")
MAX_SKIPPED = 2


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """``(first line number, code, skip reason or None)`` of each ```python block of ``path``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            match = SKIP.match(previous)
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            blocks.append((i + 2, "\n".join(lines[i + 1 : end]) + "\n", match["reason"] if match else None))
            i = end
        i += 1
    return blocks


DOCS = [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] if python_blocks(p)]


@pytest.mark.parametrize("doc", DOCS, ids=[str(p.relative_to(ROOT)) for p in DOCS])
def test_python_blocks_run(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    namespace: dict = {"__name__": "__docs__"}
    for line, code, skip in python_blocks(doc):
        compiled = compile(code, f"{doc.relative_to(ROOT)}:{line}", "exec")
        if skip is not None:
            warnings.warn(f"{doc.relative_to(ROOT)}:{line} not run: {skip}", stacklevel=1)
            continue
        exec(compiled, namespace)  # noqa: S102 - the documentation's own code


def test_few_blocks_are_skipped() -> None:
    skipped = [(p.name, line) for p in DOCS for line, _, reason in python_blocks(p) if reason is not None]
    assert len(skipped) <= MAX_SKIPPED, skipped


def test_block_reader_sees_code_and_markers(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "text\n```python\nx = 1\n```\n<!-- docs-test: skip (needs VOC) -->\n\n```python\ny\n```\n```bash\nz\n```\n"
    )
    assert python_blocks(doc) == [(3, "x = 1\n", None), (8, "y\n", "needs VOC")]


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "export").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_point_at_files(page: Path) -> None:
    targets = [m["target"].split("#")[0] for m in LINK.finditer(page.read_text(encoding="utf-8"))]
    local = [t for t in targets if t and "://" not in t and not t.startswith("mailto:")]
    missing = [t for t in local if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_docs_index_lists_every_page() -> None:
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    listed = {m["target"] for m in LINK.finditer(index)}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages <= listed, f"docs/README.md does not list {sorted(pages - listed)}"


def test_readme_is_short_and_keeps_the_ci_test_command() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200
    marker = lines.index("<!-- test-command -->")
    assert lines[marker + 1] == "```bash" and lines[marker + 2].startswith('pip install ".[test]" && pytest')
    text = "\n".join(lines)
    assert "--model" in text and "timm:<name>" in text and "package.module:factory" in text and "--arch" not in text
