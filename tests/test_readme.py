"""Every README command block meant to run does run, in short mode, so the README cannot go stale.

Runnable blocks are the fenced ```` ```bash ```` and ```` ```python ```` blocks. A block that must
not run here (it builds environments or is the suite itself) is preceded by the line
``<!-- readme-test: skip: <reason> -->``; other fences (``text``, ``toml``) are prose. The bash
blocks run with ``bash -e`` in a temporary folder that links ``.venv`` and ``demos/`` from the
checkout, with ``CI=1`` (the studies' ``[short]`` mode); the Python blocks run in order in one
interpreter, as a notebook would, in the same kind of folder. Serial only: the blocks start
their own ``mpiexec``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mpi4py import MPI

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"(?:<!-- readme-test: skip: (?P<reason>[^\n]*?) -->\n)?"
                   r"```(?P<lang>[\w-]*)\n(?P<body>.*?)\n```", re.S)

serial = pytest.mark.skipif(MPI.COMM_WORLD.size > 1, reason="the README blocks start their own "
                            "mpiexec; they run in the serial pass")


def blocks() -> list[dict]:
    """The fenced blocks of the README: language, body, skip reason (or None)."""
    return [m.groupdict() for m in FENCE.finditer(README)]


def _sandbox(tmp_path: Path) -> tuple[Path, dict]:
    for name in (".venv", "demos"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "MPI", "HYDRA"))}
    env["CI"] = "1"
    return tmp_path, env


def test_blocks_are_marked():
    """Every bash/python block either runs or says why not; the skips are the make targets."""
    found = blocks()
    runnable = [b for b in found if b["lang"] in ("bash", "python") and b["reason"] is None]
    skipped = [b for b in found if b["reason"] is not None]
    assert len(runnable) >= 4
    assert all(b["reason"].strip() for b in skipped)
    assert all(b["lang"] == "bash" for b in skipped)
    # `make test` stays the test command of the README (CI runs it)
    assert any("make test" in b["body"] for b in skipped)


@serial
@pytest.mark.parametrize("index", [i for i, b in enumerate(blocks())
                                   if b["lang"] == "bash" and b["reason"] is None])
def test_bash_block(index, tmp_path):
    block = blocks()[index]
    cwd, env = _sandbox(tmp_path)
    proc = subprocess.run(["bash", "-e", "-c", block["body"]], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{block['body']}\n--- stderr:\n{proc.stderr[-3000:]}"
    if "crossdiff run demos/segregation_disk.toml" in block["body"]:
        out = cwd / "output" / "segregation_disk"
        for name in ("diagnostics.csv", "densities.png", "diagnostics.png", "animation.gif",
                     "particles.png"):
            assert (out / name).is_file(), name
        assert "crossdiff " in proc.stdout and "| key | type |" in proc.stdout


@serial
def test_python_blocks(tmp_path):
    code = "\n\n".join(b["body"] for b in blocks()
                       if b["lang"] == "python" and b["reason"] is None)
    cwd, env = _sandbox(tmp_path)
    script = cwd / "readme_blocks.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (cwd / "out" / "diagnostics.csv").is_file()
    assert (cwd / "out" / "densities.png").is_file() and (cwd / "out" / "animation.gif").is_file()
    m = re.search(r"h_max = ([\d.]+), eps = ([\d.]+)", proc.stdout)
    assert m and float(m.group(2)) >= 2 * float(m.group(1))
