"""The repository root holds the project's own entries only: stray files cannot creep in.

A line of captured stderr (``e.txt``) was once committed at the root along with real changes.
These tests fail when a tracked root entry is not one of :data:`EXPECTED` (add a new one here
on purpose) and when an untracked file that git does not ignore lies at the root (commit it,
delete it, or ignore it in ``.gitignore`` if a tool writes it). They read git's own view, so
they skip where git or the checkout's history is missing (an unpacked release archive).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: The tracked entries of the repository root (files, and folders by their first component).
EXPECTED = {
    ".ci", ".gitignore", "CITATION.cff", "LICENSE", "Makefile", "README.md", "benchmarks",
    "demos", "docs", "fem_crossdiff", "meshes", "particles", "pyproject.toml", "requirements",
    "scripts",
    "tests",
}


def _git(*args: str) -> str:
    """``git -C ROOT *args``'s output; skips the test without git or outside a checkout."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    if not (ROOT / ".git").exists():
        pytest.skip(f"{ROOT} is not a git checkout")
    proc = subprocess.run([git, "-C", str(ROOT), *args], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:  # e.g. a checkout owned by another user (safe.directory)
        pytest.skip(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def test_tracked_root_entries_are_the_expected_ones():
    tracked = {path.split("/", 1)[0] for path in _git("ls-files", "-z").split("\0") if path}
    assert tracked - EXPECTED == set(), "tracked at the root, not expected (a stray file?)"
    assert EXPECTED - tracked == set(), "expected at the root, not tracked"


def test_no_untracked_files_at_the_root():
    # -z: one entry per NUL, "XY path", never quoted; untracked folders end in "/"
    entries = [e for e in _git("status", "--porcelain", "-z", "--untracked-files=normal",
                               "--ignored=no").split("\0") if e]
    stray = [e[3:] for e in entries if e.startswith("??") and "/" not in e[3:].rstrip("/")]
    assert not stray, (f"untracked and not ignored at the repository root: {stray} (commit, "
                       "delete, or add to .gitignore what a tool writes)")
