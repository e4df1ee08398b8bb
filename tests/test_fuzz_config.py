"""A seeded fuzz of the example study files: every mutation is exit 0 or a one-line exit 2.

Each mutation applies one to three random edits to one of ``demos/*.toml`` (a value replaced
by a hostile one, a line deleted, duplicated or swapped, a key renamed, bytes inserted, the
file cut short, deep nesting, unknown sections, numbers scaled) and is checked with
``crossdiff check --short`` in-process (mesh checks included); a few go through a real
subprocess with a timeout. No traceback, no hang, exit 0 or 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fem_crossdiff.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "demos").glob("*.toml"))
SEED = 20261201

HOSTILE = [
    "0", "-1", "1e308", "-1e-308", "nan", "inf", "-inf", "true", '"x"', '""', "[]", "{}",
    "[1, 2, 3]", "{ a = 1 }", "9" * 400, "9223372036854775808", "1e-5", "1e9", "1000000000",
    '"python"', '"~nosuchuser/x"', '"/proc/x"', '"\\u0000"', '"' + "+".join(["1"] * 600) + '"',
    '"' + "(" * 300 + "x" + ")" * 300 + '"', '"' + "-" * 900 + 'x"', '"x**x**x**x**x"',
    '"__import__(\'os\')"', '"ascii:/tmp/fuzz.txt"', "[[1.0, 2.0], [3.0]]", "2.5", "3",
    '"nonlocal"', '"galerkin"', '"bdf2"', '"lu"', "1979-05-27T07:32:00Z", "[" * 40 + "]" * 40,
]
SECTIONS = ["[resources]\nmemory_limit_gb = 1e-6", "[foo]\nx = 1", "[solver]\npetsc = { "
            "snes_type = \"python\" }", "[short]\nmodel = { a = [1.0] }", "[particles]\nN = 10",
            "[[initial]]\nprofile = \"uniform\"\nvalue = 1.0", "[solver.petsc]\nksp_view = true"]


def _mutate(rng: np.random.Generator, text: str) -> bytes:
    lines = text.splitlines()
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(0, 10))
        i = int(rng.integers(0, len(lines))) if lines else 0
        values = [k for k, ln in enumerate(lines) if "=" in ln and not ln.lstrip().startswith("#")]
        if op == 0 and values:  # a hostile value
            k = values[int(rng.integers(0, len(values)))]
            value = HOSTILE[int(rng.integers(0, len(HOSTILE)))]
            lines[k] = lines[k].split("=", 1)[0] + "= " + value
        elif op == 1 and lines:
            del lines[i]
        elif op == 2 and lines:
            lines.insert(i, lines[i])
        elif op == 3 and values:  # a renamed key
            k = values[int(rng.integers(0, len(values)))]
            key, rest = lines[k].split("=", 1)
            lines[k] = key.rstrip() + "_x =" + rest
        elif op == 4:  # random bytes, not all of them UTF-8
            raw = "\n".join(lines).encode()
            pos = int(rng.integers(0, len(raw) + 1))
            junk = bytes(rng.integers(0, 256, int(rng.integers(1, 4))).astype(np.uint8))
            return raw[:pos] + junk + raw[pos:]
        elif op == 5:  # cut short
            raw = "\n".join(lines).encode()
            return raw[: int(rng.integers(0, len(raw) + 1))]
        elif op == 6:
            depth = int(rng.integers(10, 3000))
            lines.append("deep = " + "[" * depth + "]" * depth)
        elif op == 7 and len(lines) > 1:
            j = int(rng.integers(0, len(lines)))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 8:
            lines.extend(SECTIONS[int(rng.integers(0, len(SECTIONS)))].splitlines())
        elif op == 9 and values:  # a number scaled by 10^k
            k = values[int(rng.integers(0, len(values)))]
            key, rest = lines[k].split("=", 1)
            scale = 10.0 ** int(rng.integers(-8, 9))
            try:
                lines[k] = f"{key}= {float(rest.split('#')[0]) * scale!r}"
            except ValueError:
                pass
    return ("\n".join(lines) + "\n").encode()


def _mutants(n: int) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(SEED)
    texts = [(p, p.read_text()) for p in EXAMPLES]
    out = []
    for k in range(n):
        path, text = texts[int(rng.integers(0, len(texts)))]
        out.append((f"{k:03d}-{path.stem}", _mutate(rng, text)))
    return out


#: The most cells a checked mutant may mesh (the seeded mutants mesh at most 8190, measured):
#: one meshing far more got past the size guards and makes ``check`` slow. A count, not a
#: time, so that a loaded machine cannot fail the test.
MAX_CELLS = 2 * 10**5


def _run_mutant(comm, capsys, folder: Path, name: str, data: bytes, problems: list,
                cells: list) -> int:
    path = folder / f"{name}.toml"
    if comm.rank == 0:
        path.write_bytes(data)
    comm.barrier()
    capsys.readouterr()
    cells.clear()
    code = main(["check", str(path), "--short"], comm=comm)
    err = capsys.readouterr().err
    lines = comm.bcast(err.strip().splitlines() if comm.rank == 0 else None, root=0)
    ok = code == 0 or (code == 2 and len(lines) == 1
                       and lines[0].startswith("crossdiff: config error"))
    if not ok or "Traceback" in err or max(cells, default=0) > MAX_CELLS:
        problems.append((name, code, cells[:], lines[:3]))
    return code


def test_fuzz_examples_in_process(comm, mpi_tmp_path, capsys, monkeypatch):
    """A few hundred seeded mutations (fewer under MPI: each valid one builds a solver)."""
    from fem_crossdiff import study

    monkeypatch.chdir(mpi_tmp_path)  # relative output folders are probed here
    cells, meshed, build = [], [0], study._build_geometry

    def counted(cfg, comm):  # the global number of cells of every mesh the check builds
        geo = build(cfg, comm)
        tdim = geo.mesh.topology.dim
        cells.append(geo.mesh.topology.index_map(tdim).size_global)
        meshed[0] += 1
        return geo

    monkeypatch.setattr(study, "_build_geometry", counted)
    n = 300 if comm.size == 1 else 40
    problems, codes = [], []
    for name, data in _mutants(n):
        codes.append(_run_mutant(comm, capsys, mpi_tmp_path, name, data, problems, cells))
    assert not problems, "\n".join(map(str, problems))
    # the fuzz exercises both outcomes (a mutation may leave a valid file)
    assert codes.count(0) >= n // 20 and codes.count(2) >= n // 2
    assert meshed[0] >= codes.count(0)  # every valid mutant's mesh was counted


@pytest.mark.slow  # three subprocesses that import DOLFINx: about 30 s under load
def test_fuzz_examples_subprocess(comm, tmp_path):
    """A handful of mutants through ``python -m fem_crossdiff check``: exit 0/2, no hang."""
    if comm.size > 1:
        pytest.skip("subprocesses are launched from the serial run")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "MPI", "HYDRA"))}
    rng = np.random.default_rng(SEED + 1)
    picks = [m for k, m in enumerate(_mutants(300)) if k in set(rng.choice(300, 3, False))]
    for name, data in picks:
        path = tmp_path / f"{name}.toml"
        path.write_bytes(data)
        proc = subprocess.run([sys.executable, "-m", "fem_crossdiff", "check", str(path),
                               "--short"], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode in (0, 2), proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.returncode == 0 or len(lines) == 1, proc.stderr
