"""The model interface: models and laws written here plug in through the registry alone.

Also: one driver writes the same diagnostics from the API and from the CLI, the installed
distribution provides no top-level import name but ``fem_crossdiff``, and the lumped time term
of the Jacobian is a constant diagonal (no UFL assembly in the Newton loop).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import ufl

from fem_crossdiff.compat import MPI, fem, mesh
from fem_crossdiff.laws import PowerLaw, PressureLaw
from fem_crossdiff.models import entries, get_model, register, schemes
from fem_crossdiff.models.base import Model
from fem_crossdiff.models.upwind import LocalUpwind
from fem_crossdiff.params import ModelParams, TimeParams
from fem_crossdiff.solver import CrossDiffusionSolver

COMM = MPI.COMM_WORLD
ROOT = Path(__file__).resolve().parents[1]


@register("heat-test")
class Heat(Model):
    """A toy model: ``d_t rho_k = sigma Lap rho_k`` as a UFL form, consistent mass, P1/P2."""

    lumped = False
    degrees = (1, 2)

    def form(self, rho, v):
        """Diffusion only."""
        s = self.params.sigma
        return sum(s * ufl.inner(ufl.grad(rho[k]), ufl.grad(v[k])) * ufl.dx
                   for k in range(self.params.n))


@dataclass(frozen=True)
class CubeLaw(PressureLaw):
    """``P = S^2`` written out by hand (the same law as ``PowerLaw(3)``)."""

    def pressure(self, S):
        """``S^2``."""
        return np.maximum(S, 0.0) ** 2

    def derivative(self, S):
        """``2 S``."""
        return 2.0 * np.maximum(S, 0.0)

    def energy_density(self, S):
        """``S^3 / 3``."""
        return np.maximum(S, 0.0) ** 3 / 3.0


@register("upwind-cube-test")
class UpwindCube(LocalUpwind):
    """The upwind model with its flux evaluated through another law object."""

    def __init__(self, V, params, negative_edges="limit"):
        super().__init__(V, params, negative_edges)
        self.flux.law = CubeLaw()


@pytest.mark.parametrize("degree", [1, 2])
def test_toy_model_decays_like_the_heat_equation(degree):
    """A model defined in this file: cos(pi x) decays like exp(-sigma pi^2 t), mass is kept."""
    sigma, T, steps = 0.1, 0.2, 200
    msh = mesh.create_interval(COMM, 64, [0.0, 1.0])
    p = ModelParams(a=(1.0,), b=(1.0,), sigma=sigma)
    s = CrossDiffusionSolver(msh, p, degree=degree, scheme="heat-test")
    assert isinstance(s.model, Heat) and get_model("heat-test") is Heat
    s.set_initial([lambda x: 1.0 + 0.5 * np.cos(np.pi * x[0])])
    m0 = s.masses()[0]
    rows = s.run(TimeParams(T=T, dt=T / steps, method="bdf2"), progress=False)
    assert len(rows) == steps + 1 and abs(s.t - T) < 1e-12
    x = ufl.SpatialCoordinate(msh)
    exact = 1.0 + 0.5 * ufl.cos(ufl.pi * x[0]) * np.exp(-sigma * np.pi ** 2 * T)
    err = np.sqrt(COMM.allreduce(fem.assemble_scalar(fem.form(
        (s.rho[0] - exact) ** 2 * ufl.dx(degree=8))), op=MPI.SUM))
    assert err < 2e-4
    assert abs(s.masses()[0] / m0 - 1.0) < 1e-12


def test_second_pressure_law_plugs_into_a_model():
    """A hand-written law inside a registered model gives the built-in m = 3 result."""
    msh = mesh.create_unit_square(COMM, 10, 10)
    p = ModelParams(a=(1.0, 0.5), b=(1.0, 2.0), m=3.0, sigma=1e-3)
    init = [lambda x: 0.4 + 0.3 * np.cos(np.pi * x[0]), lambda x: 0.2 + 0.2 * x[1]]
    out = []
    for name in ("upwind", "upwind-cube-test"):
        s = CrossDiffusionSolver(msh, p, scheme=name, linear_solver="direct")
        s.set_initial(init)
        for _ in range(3):
            assert s.step(1e-2).accepted
        out.append(s.rho.x.array.copy())
    assert isinstance(s.model.flux.law, CubeLaw)
    diff = COMM.allreduce(float(np.abs(out[0] - out[1]).max()), op=MPI.MAX)
    change = COMM.allreduce(float(np.abs(out[0] - s.history[1].x.array).max()), op=MPI.MAX)
    assert diff < 1e-11 and change > 1e-4


def test_power_law_values():
    """The law's nodal and UFL forms agree, ``e' = P``, and ``m = 2`` needs no powers."""
    S = np.array([0.0, 0.3, 1.7, -1e-18])
    for m in (2.0, 2.5, 4.0):
        law = PowerLaw(m)
        assert np.allclose(law.pressure(S), np.maximum(S, 0) ** (m - 1))
        assert np.allclose(law.derivative(S[1:3]), (m - 1) * S[1:3] ** (m - 2))
        h = 1e-6
        fd = (law.energy_density(S[1:3] + h) - law.energy_density(S[1:3] - h)) / (2 * h)
        assert np.allclose(fd, law.pressure(S[1:3]), rtol=1e-8)
    with pytest.raises(ValueError, match="m = 1.5"):
        PowerLaw(1.5)


def test_registry_errors():
    with pytest.raises(ValueError, match="scheme = 'nope'.*upwind"):
        get_model("nope")
    with pytest.raises(ValueError, match="already registered"):
        register("upwind")(Heat)
    msh = mesh.create_unit_interval(COMM, 8)
    with pytest.raises(ValueError, match="degree = 2.*muscl.*scheme='galerkin'"):
        CrossDiffusionSolver(msh, ModelParams(a=(1.0,), b=(1.0,)), degree=2)  # the default
    with pytest.raises(ValueError, match="negative_edges"):
        CrossDiffusionSolver(msh, ModelParams(a=(1.0,), b=(1.0,)), negative_edges="x")
    assert {"upwind", "galerkin", "muscl", "afc"} <= set(schemes("local"))
    assert {(e.pde, e.scheme) for e in entries() if e.pde != "local"} == {
        ("nonlocal", "upwind"), ("potential", "upwind")}
    with pytest.raises(ValueError, match="scheme = 'muscl'.*nonlocal"):
        get_model("muscl", "nonlocal")


def test_lumped_jacobian_has_no_form_part():
    """The lumped time term is added as a diagonal: the Jacobian equals finite differences."""
    msh = mesh.create_unit_square(COMM, 6, 6)
    p = ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), m=2.5, sigma=1e-2)
    s = CrossDiffusionSolver(msh, p, linear_solver="direct")
    assert s.problem.time_diag is not None
    s.set_initial([lambda x: 0.5 + 0.3 * x[0], lambda x: 0.2 + 0.1 * x[1] ** 2])
    s._set_coefficients(0.05, "ie")
    snes, x = s.snes, s.problem.x
    x.array[:] = s.rho.x.array[: x.getLocalSize()]
    J, P = s.problem.A, s.problem.A
    snes.computeJacobian(x, J, P)
    rng = np.random.default_rng(COMM.rank)
    dx = x.duplicate()
    dx.array[:] = rng.standard_normal(dx.getLocalSize())
    Jdx = x.duplicate()
    J.mult(dx, Jdx)
    f0, f1 = x.duplicate(), x.duplicate()
    h = 1e-7
    snes.computeFunction(x, f0)
    xp = x.copy()
    xp.axpy(h, dx)
    snes.computeFunction(xp, f1)
    f1.axpy(-1.0, f0)
    f1.scale(1.0 / h)
    f1.axpy(-1.0, Jdx)
    assert f1.norm() < 1e-5 * Jdx.norm()


def test_api_and_cli_write_the_same_csv(comm, mpi_tmp_path):
    """One driver: the CLI and the API produce the same diagnostics for the same study."""
    from fem_crossdiff.cli import main
    from fem_crossdiff.config import load_config

    path = mpi_tmp_path / "study.toml"
    if comm.rank == 0:
        path.write_text(
            '[model]\na = [1.0, 2.0]\nb = [1.0, 0.5]\nm = 2.5\nsigma = 1e-3\n'
            '[geometry]\nbuilder = "rectangle"\nh = 0.15\n'
            '[[initial]]\nprofile = "gaussian"\ncenter = [0.5, 0.5]\nwidth = 0.2\n'
            'height = 1.0\nbackground = 0.05\n'
            '[[initial]]\nprofile = "uniform"\nvalue = 0.2\n'
            '[time]\nT = 0.01\ndt = 2e-3\nadaptive = true\n'
            '[output]\nformats = ["csv"]\nprogress = false\n')
    comm.barrier()
    out = mpi_tmp_path / "cli"
    assert main(["run", str(path), "--quiet", "--output", str(out)], comm=comm) == 0
    cfg = load_config(path)
    s = CrossDiffusionSolver(cfg.geometry.build(comm).mesh, cfg.model.params(),
                             scheme=cfg.solver.scheme, linear_solver=cfg.solver.linear_solver)
    s.set_initial([ic.function(2) for ic in cfg.initial])
    s.run(cfg.time.params(), csv_path=mpi_tmp_path / "api.csv", progress=False)
    same = None
    if comm.rank == 0:
        def read(p):
            with open(p, newline="") as f:
                return list(csv.DictReader(f))
        a, b = read(out / "diagnostics.csv"), read(mpi_tmp_path / "api.csv")
        same = (list(a[0]) == list(b[0]) and len(a) == len(b) and len(a) >= 5
                and "rejected" in a[0]
                and all(abs(float(ra[k]) - float(rb[k])) <= 1e-12 * max(1.0, abs(float(ra[k])))
                        for ra, rb in zip(a, b) for k in ra))
    assert comm.bcast(same, root=0)


def test_distribution_provides_only_fem_crossdiff(comm, tmp_path):
    """The wheel installs ``fem_crossdiff`` and nothing else at the top level."""
    names = None
    if comm.rank == 0:
        res = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--quiet", "-w", str(tmp_path), str(ROOT)],
            capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stderr[-2000:]
        (wheel,) = tmp_path.glob("fem_crossdiff-*.whl")
        with zipfile.ZipFile(wheel) as z:
            tops = {n.split("/")[0] for n in z.namelist()}
            names = sorted(t for t in tops if not t.endswith(".dist-info"))
            sub = {n.split("/")[1] for n in z.namelist() if n.startswith("fem_crossdiff/")}
        assert {"particles", "meshes", "models", "config"} <= sub
    assert comm.bcast(names, root=0) == ["fem_crossdiff"]


def test_import_in_a_fresh_interpreter(comm):
    """``import fem_crossdiff`` and the FE modules need no import-order step by the user."""
    ok = None
    if comm.rank == 0:
        code = ("import fem_crossdiff.solver, fem_crossdiff.meshes, fem_crossdiff.particles; "
                "print(fem_crossdiff.__version__)")
        # a fresh interpreter, not a rank of this job: without the launcher's variables
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PMI", "HYDRA", "MPI", "OMPI", "PMIX"))}
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, cwd="/", env=env)
        ok = res.returncode == 0 and res.stdout.strip() == __import__("fem_crossdiff").__version__
    assert comm.bcast(ok, root=0)
