"""User-facing text stands on its own: no links outside the repository, no issue numbers, and every
relative link in the README and docs resolves."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_links_stay_inside_and_resolve(doc):
    text = doc.read_text()
    assert "../shared" not in text
    for target in re.findall(r"\]\(([^)#\s]+)\)", text):
        if "://" in target:
            continue
        assert (doc.parent / target).resolve().is_relative_to(ROOT), target
        assert (doc.parent / target).exists(), f"{doc.name} links a missing {target}"


@pytest.mark.parametrize("module,commands", [
    ("infovae_kernels", ["mmd", "kid", "info", "selftest", "drift", "ksd", "bench"]),
    ("infovae", ["train", "eval", "sample", "demo", "reproduce"])])
def test_help_names_no_issue_numbers(module, commands):
    for cmd in [[]] + [[c] for c in commands]:
        out = subprocess.run([sys.executable, "-m", module, *cmd, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert not re.search(r"\bissue\s*#?\d", out.stdout, re.I), out.stdout
