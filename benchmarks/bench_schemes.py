"""The spatial schemes side by side: rates, positivity, front sharpness and cost per step.

For every scheme in ``--schemes`` (default: every registered positive scheme, i.e.
all but ``galerkin``; a spec ``name:limiter`` selects a limiter of ``muscl``, e.g.
``muscl:superbee``):

* Barenblatt (``sigma = 0``, one species, BDF2 with ``dt = 0.033 h``, ``--cfl``, quick
  0.066 h, on ``[-6, 6]``; 2D on ``[-3, 3]^2``): relative L1 error at ``t = 1`` from the
  profile at ``tau = kappa = (m - 1) / m`` (the equation is ``u_t = kappa Lap(u^m)``) and its
  rate, for ``--m`` in 1D and ``--m2d`` in 2D (default 2 and 3), in the measures of
  :func:`barenblatt_errors` (against the interpolant, the figure of the issue; against the
  profile; nodal; pressure; away from the front) next to the interpolant's own error, P1's
  floor (``docs/barenblatt.md``); ``--shifts``: 1D errors averaged over shifted meshes,
  ``--initial mass``: initial data of exact mass; the smallest ``min rho / max rho`` seen;
* segregation (``sigma = 0``, ``m = 2``, ``a = b = (1, 1)``, 1D, implicit Euler or
  ``--seg-method bdf2``, ``dt = --cfl h``; rejected steps are counted): a Barenblatt
  mixture split at ``x0 = -0.5`` (species 1 left, 2 right); the overlap ``int rho_1 rho_2`` at
  ``t = 1`` and its rate, and the interface (where ``rho_1 = rho_2``) against the exact path
  ``x(t) = x_h(0) (tau / tau_0)^(1/(m+1))`` of the discrete initial interface, in units of h;
* 3D Barenblatt (``m = 2``) in a gmsh ball, IE with ``dt = h / 4`` (the test's set-up);
* a smooth steady manufactured solution in 2D (``tests``' coefficients), L2 rate;
* cost: the fastest of ``--steps`` implicit-Euler steps on ``bench_local``'s state and
  coefficients (GMRES + GAMG, or ``--linear-solver direct``), each scheme timed alternately in
  one run, at 252k and 1.0M unknowns (``--quick``: 8k, one step), as a ratio to the first
  scheme, with Newton (and Krylov) iterations per step. A cost spec may add model options
  and PETSc options, ``muscl+preconditioner=exact``, ``muscl+-snes_lag_preconditioner=2``
  (solver variants side by side); ``--profile`` prints where the time of each scheme's
  timed steps goes (cProfile, own time per function).

Rates are least-squares fits over all meshes, and the rate between the two finest
(``*_rate_fine``): on the coarse meshes the figures are pre-asymptotic.

Only rank 0 prints. The last line is one JSON object. Timings on a shared machine are noisy:
the ratios are measured side by side. ``--quick`` runs the cheapest meshes of every figure
(about two minutes); the default runs the meshes of ``docs/schemes.md``; ``--figures`` and the
mesh options run one study, e.g. ``--figures segregation --nseg 150,300,600,1200
--schemes upwind,muscl,muscl:superbee,muscl:sensor``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import ufl
from bench_local import DT, PARAMS, initial_state

from fem_crossdiff.compat import MPI, PETSc, fem, la, mesh
from fem_crossdiff.discretisation.forms import VERTEX
from fem_crossdiff.exact import barenblatt, steady_source
from fem_crossdiff.measures import exact_lp_error
from fem_crossdiff.models import entries
from fem_crossdiff.params import ModelParams, TimeParams
from fem_crossdiff.solver import CrossDiffusionSolver

COMM = MPI.COMM_WORLD
#: The schemes compared by default: every registered positive scheme of the local system
#: (Galerkin is not positive: it fails on compactly supported data). A new scheme is one
#: registered model (:mod:`fem_crossdiff.models`).
COMPARED = tuple(e.scheme for e in entries("local") if e.positive)
FIGURES = ("barenblatt", "segregation", "ball", "mms", "cost")


def scheme_options(spec: str) -> tuple[str, dict]:
    """``"muscl:superbee"`` -> ``("muscl", {"limiter": "superbee"})``."""
    name, _, lim = spec.partition(":")
    return name, ({"limiter": lim} if lim else {})


def _integral(f) -> float:
    return COMM.allreduce(fem.assemble_scalar(fem.form(f * ufl.dx)), op=MPI.SUM)


def _rate(hs, errs) -> float:
    return float(np.polyfit(np.log(hs), np.log(errs), 1)[0])


#: Error measures of the Barenblatt figures (relative, at t = 1), see :func:`barenblatt_errors`.
MEASURES = ("interp", "exact", "lumped", "pressure", "interior")


def barenblatt_errors(u, exact, m) -> dict:
    """Relative L1 errors of the P1 solution ``u`` against the Barenblatt profile ``exact``.

    * ``interp``: ``int |u - I_h exact|`` with UFL's default (one-point) quadrature, divided
      by ``int |I_h exact|`` (the figure used before these measures);
    * ``exact``: ``int |u - exact|`` against the profile itself, composite quadrature at the
      front (:func:`fem_crossdiff.measures.exact_lp_error`): includes P1's best-approximation
      error;
    * ``lumped``: the nodal error ``sum_i m_i |u_i - exact(x_i)|`` in the lumped mass;
    * ``pressure``: ``int |P_h - P|`` with ``P = exact^(m-1)`` (Lipschitz at the front for every
      ``m``) and ``P_h`` the P1 function of the nodal pressures ``u_i^(m-1)``;
    * ``interior``: ``exact`` restricted to where the profile exceeds 0.6 of its maximum
      (``r < 0.8 R`` for ``m = 2`` and ``3``, ``R`` the front), away from the front.

    Each also for the nodal interpolant of the profile in place of ``u`` (key
    ``interpolant_<measure>``; for ``interp`` and ``lumped`` it is 0 by definition and left out).
    """
    V = u.function_space
    ex = fem.Function(V)
    ex.interpolate(exact)
    dxv = ufl.dx(metadata=VERTEX)
    lump = fem.assemble_vector(fem.form(ufl.TestFunction(V) * dxv))
    lump.scatter_reverse(la.InsertMode.add)
    own = V.dofmap.index_map.size_local
    mass = lump.array[:own]

    def lsum(v):
        return COMM.allreduce(float(np.sum(mass * v[:own])), op=MPI.SUM)

    def pressure_of(f):
        g = fem.Function(V)
        g.x.array[:] = np.maximum(f.x.array, 0.0) ** (m - 1)
        return g

    def pressure(x):
        return exact(x) ** (m - 1)

    top = COMM.allreduce(float(np.max(ex.x.array, initial=0.0)), op=MPI.MAX)

    def inside(x):
        return exact(x) > 0.6 * top

    norm = exact_lp_error(fem.Function(V), exact)
    pnorm = exact_lp_error(fem.Function(V), pressure)
    inorm = exact_lp_error(fem.Function(V), exact, where=inside)
    out = {"interp": _integral(abs(u - ex)) / _integral(abs(ex)),
           "lumped": lsum(np.abs(u.x.array - ex.x.array)) / lsum(np.abs(ex.x.array))}
    for key, f in (("", u), ("interpolant_", ex)):
        out[key + "exact"] = exact_lp_error(f, exact) / norm
        out[key + "pressure"] = exact_lp_error(pressure_of(f), pressure) / pnorm
        out[key + "interior"] = exact_lp_error(f, exact, where=inside) / inorm
    return out


def barenblatt_error(scheme, dim, m, n, min_rel, method="bdf2", cfl=0.033, measures=False,
                     initial="interpolant", shift=0.0):
    """Relative L1 error at ``t = 1`` (``dt = cfl h``, profile time ``tau = kappa (1 + t)``).

    Returns ``(error, h)``, the error in the measure ``interp`` of :func:`barenblatt_errors`;
    with ``measures`` the dict of every measure of :func:`barenblatt_errors` in its place.
    ``initial="mass"`` scales the interpolated initial profile so that its lumped mass is
    the profile's exact mass: for ``m = 3`` the interpolant's mass is off by an ``O(h^1.5)``
    amount that depends on where the front sits in its cell, and the scheme conserves it.
    ``shift`` moves the 1D mesh by that fraction of a cell (the front's place in its cell).
    """
    C = 1.0 if dim == 1 else (0.25 if m == 2 else 0.2)
    if dim == 1:
        h = 12.0 / n
        msh = mesh.create_interval(COMM, n, [-6.0 + shift * h, 6.0 + shift * h])
    else:
        msh = mesh.create_rectangle(COMM, [[-3.0, -3.0], [3.0, 3.0]], [n, n])
        h = 6.0 / n
    kappa = (m - 1) / m
    name, opts = scheme_options(scheme)
    s = CrossDiffusionSolver(msh, ModelParams(a=(1.0,), b=(1.0,), m=m, sigma=0.0), scheme=name,
                             **opts)
    s.set_initial([lambda x: barenblatt(x, kappa, m, dim, C)])
    if initial == "mass":
        scale = (exact_lp_error(fem.Function(s.V0), lambda x: barenblatt(x, kappa, m, dim, C))
                 / s.masses()[0])
        s.set_initial([lambda x: scale * barenblatt(x, kappa, m, dim, C)])
    s.run(TimeParams(T=1.0, dt=cfl * h, method=method), progress=False,
          callback=lambda sv, row: min_rel.append(row["min_1"] / row["max_1"]))
    errs = barenblatt_errors(s.species(0), lambda x: barenblatt(x, 2 * kappa, m, dim, C), m)
    return (errs if measures else errs["interp"]), h


def segregation(scheme, n, min_rel, cfl=0.033, method="ie"):
    """Overlap, interface offset / h, h, Newton per step and rejected steps at t = 1.

    ``method="bdf2"`` runs with the stepper's rejection of steps with a negative density
    (BDF2 is not positivity preserving): the rejected steps are counted.
    """
    m, x0, beta = 2.0, -0.5, 1.0 / 3.0
    kappa = (m - 1) / m
    msh = mesh.create_interval(COMM, n, [-6.0, 6.0])
    name, opts = scheme_options(scheme)
    s = CrossDiffusionSolver(msh, ModelParams(a=(1.0, 1.0), b=(1.0, 1.0), m=m, sigma=0.0),
                             scheme=name, **opts)
    s.set_initial([lambda x: np.where(x[0] < x0, barenblatt(x, kappa, m), 0.0),
                   lambda x: np.where(x[0] >= x0, barenblatt(x, kappa, m), 0.0)])

    def interface():
        X = COMM.allgather(s.V0.tabulate_dof_coordinates()[:, 0])
        r = COMM.allgather(s.rho.x.array.reshape(-1, 2))
        X, r = np.concatenate(X), np.concatenate(r)
        o = np.argsort(X)
        X, d = X[o], (r[:, 0] - r[:, 1])[o]
        k = np.flatnonzero((d[:-1] > 0) & (d[1:] <= 0))[0]
        return X[k] + d[k] / (d[k] - d[k + 1]) * (X[k + 1] - X[k])

    h = 12.0 / n
    xi0 = interface()
    rows = s.run(TimeParams(T=1.0, dt=cfl * h, method=method), progress=False)
    for r in rows:
        min_rel.append(min(r["min_1"] / r["max_1"], r["min_2"] / r["max_2"]))
    newton = float(np.mean([r["newton_its"] for r in rows[1:]]))
    rejected = int(sum(r.get("rejected", 0) for r in rows))
    return (_integral(s.rho[0] * s.rho[1]), (interface() - xi0 * 2.0 ** beta) / h, h, newton,
            rejected)


def barenblatt_3d(scheme, h, min_rel, measures=False):
    """Relative L1 error at t = 1 in a gmsh ball (m = 2, IE, dt = h / 4).

    The ``interp`` measure of :func:`barenblatt_errors`; with ``measures`` all of them.
    """
    from fem_crossdiff import meshes

    m, C = 2.0, 0.0185
    geo = meshes.ball(COMM, h=h)
    name, opts = scheme_options(scheme)
    s = CrossDiffusionSolver(geo.mesh, ModelParams(a=(1.0,), b=(1.0,), m=m, sigma=0.0),
                             scheme=name, **opts)
    kappa = (m - 1) / m
    s.set_initial([lambda x: barenblatt(x, kappa, m, 3, C)])
    s.run(TimeParams(T=1.0, dt=h / 4), progress=False,
          callback=lambda sv, row: min_rel.append(row["min_1"] / row["max_1"]))
    errs = barenblatt_errors(s.species(0), lambda x: barenblatt(x, 2 * kappa, m, 3, C), m)
    return errs if measures else errs["interp"]


MMS = ModelParams(a=(1.0, 0.5), b=(1.0, 2.0), m=2.5, sigma=0.1)


def mms_error(scheme, n):
    """L2 error of the steady manufactured solution on the unit square (tests' set-up)."""
    msh = mesh.create_unit_square(COMM, n, n)
    x = ufl.SpatialCoordinate(msh)
    exact = [1.0 + 0.5 * ufl.cos(ufl.pi * x[0]) * ufl.cos(ufl.pi * x[1]),
             0.8 - 0.3 * ufl.cos(2 * ufl.pi * x[0])]

    name, opts = scheme_options(scheme)
    if name == "afc":  # its edge Jacobian holds the bounds: Newton stalls at dt = 1e3
        opts.setdefault("jacobian", "mf")
    s = CrossDiffusionSolver(msh, MMS, scheme=name, linear_solver="direct",
                             source=steady_source(MMS, exact), positivity_tol=None, **opts)
    s.set_initial(exact)
    s.run(TimeParams(T=2e3, dt=1e3, adaptive=True), progress=False)
    return max(np.sqrt(_integral((s.rho[k] - exact[k]) ** 2)) for k in range(2))


def cost_options(spec: str) -> tuple[str, dict]:
    """``"muscl+preconditioner=exact"`` -> ``("muscl", {"preconditioner": "exact"})``.

    The cost figure's scheme spec: :func:`scheme_options`' spec, then ``+key=value`` model
    options (strings) and ``+-name=value`` PETSc options of the solver (``+-pc_use_amat=true``),
    so that solver variants of one scheme are timed side by side.
    """
    base, *extra = spec.split("+")
    name, opts = scheme_options(base)
    petsc = {}
    for item in extra:
        key, _, value = item.partition("=")
        if key.startswith("-"):
            petsc[key[1:]] = value
        else:
            opts[key] = value
    if petsc:
        opts["petsc_options"] = petsc
    return name, opts


def _profiled(profile, call):
    """``call()``, under ``cProfile`` if ``profile`` (a dict collecting the stats per call)."""
    if profile is None:
        return call()
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    try:
        return call()
    finally:
        prof.disable()
        profile.setdefault("runs", []).append(prof)


#: PETSc events counted over the timed steps with ``--profile``: residual evaluations (line
#: search included), Jacobian builds, multigrid set-ups, preconditioner applications (one per
#: Krylov iteration and one per solve, right preconditioning), linear solves.
PROFILE_EVENTS = ("SNESFunctionEval", "SNESJacobianEval", "PCSetUp", "PCApply", "KSPSolve")


def _event_log() -> dict:
    """Count and seconds of every :data:`PROFILE_EVENTS` so far (``PETSc.Log.begin`` on)."""
    out = {}
    for name in PROFILE_EVENTS:
        info = PETSc.Log.Event(name).getPerfInfo()
        out[name] = (int(info["count"]), float(info["time"]))
    return out


def print_events(label, before, after):
    """Rank 0 prints the PETSc event counts and seconds between two :func:`_event_log`."""
    if COMM.rank != 0:
        return
    parts = [f"{k} {after[k][0] - before[k][0]} ({after[k][1] - before[k][1]:.2f} s)"
             for k in PROFILE_EVENTS]
    print(f"PETSc events of {label}, timed steps: " + ", ".join(parts), flush=True)


def print_profile(label, runs, top=14):
    """Rank 0 prints the functions of largest own time over ``runs`` (cProfile objects)."""
    import io
    import pstats

    if COMM.rank != 0 or not runs:
        return
    buf = io.StringIO()
    st = pstats.Stats(runs[0], stream=buf)
    for r in runs[1:]:
        st.add(r)
    st.strip_dirs().sort_stats("tottime").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    print(f"profile of {label} ({len(runs)} timed steps, own time):", flush=True)
    print("\n".join(lines[3:]), flush=True)


def step_costs(schemes, n, steps, dt, linear_solver="iterative", profile=False):
    """Fastest IE step per scheme (alternating), Newton iterations, unknowns.

    A scheme whose step fails (Newton or the linear solve) gets ``None`` and is not timed
    further; the failure is reported. Schemes are specs of :func:`cost_options`. With
    ``profile`` the timed steps run under ``cProfile`` and rank 0 prints, per scheme, where
    the time goes (the PETSc solve's own time is GAMG set-up and Krylov iterations) and the
    PETSc event counts (residuals, Jacobians, multigrid set-ups, preconditioner applications).
    """
    msh = mesh.create_unit_square(COMM, n, n)
    solvers, failed = {}, {}
    for sch in schemes:
        name, opts = cost_options(sch)
        s = CrossDiffusionSolver(msh, PARAMS, scheme=name, linear_solver=linear_solver, **opts)
        s.set_initial([lambda x: initial_state(x)[0], lambda x: initial_state(x)[1]])
        info = s.step(dt, "ie")  # warm-up
        if info.accepted:
            solvers[sch] = s
        else:
            failed[sch] = info.message
    secs = {sch: [] for sch in solvers}
    newton = {sch: [] for sch in solvers}
    krylov = {sch: [] for sch in solvers}
    profiles = {sch: ({} if profile else None) for sch in solvers}
    events = {sch: {k: (0, 0.0) for k in PROFILE_EVENTS} for sch in solvers}
    for _ in range(steps):
        for sch, s in list(solvers.items()):
            COMM.Barrier()
            e0 = _event_log() if profile else None
            t0 = time.perf_counter()
            info = _profiled(profiles[sch], lambda s=s: s.step(dt, "ie"))
            secs[sch].append(COMM.allreduce(time.perf_counter() - t0, op=MPI.MAX))
            if profile:  # this scheme's share of the PETSc events
                e1 = _event_log()
                events[sch] = {k: (events[sch][k][0] + e1[k][0] - e0[k][0],
                                   events[sch][k][1] + e1[k][1] - e0[k][1])
                               for k in PROFILE_EVENTS}
            if not info.accepted:
                failed[sch] = info.message
                del solvers[sch]
                continue
            newton[sch].append(info.newton_its)
            krylov[sch].append(info.krylov_its)
    for sch, prof in profiles.items():
        if prof:
            print_profile(f"{sch} at n={n}, dt={dt:g}", prof.get("runs", []))
            print_events(f"{sch} at n={n}", {k: (0, 0.0) for k in PROFILE_EVENTS}, events[sch])
    if COMM.rank == 0:
        print("Krylov iterations per timed step: " + ", ".join(
            f"{sch} {krylov[sch]}" for sch in krylov), flush=True)
    V = CrossDiffusionSolver(msh, PARAMS).V
    unknowns = int(V.dofmap.index_map.size_global * V.dofmap.index_map_bs)
    best = {k: (min(v) if k not in failed else None) for k, v in secs.items()}
    best.update({k: None for k in failed})
    its = {k: (float(np.mean(v)) if k not in failed else None) for k, v in newton.items()}
    its.update({k: None for k in failed})
    return unknowns, best, its, failed


class _Clock:
    """Wall seconds of each figure (``tick(name)`` starts ``name`` and stops the last one)."""

    def __init__(self):
        self.seconds, self._name, self._t = {}, None, time.perf_counter()

    def tick(self, name):
        now = time.perf_counter()
        if self._name is not None:
            self.seconds[self._name] = self.seconds.get(self._name, 0.0) + now - self._t
        self._name, self._t = name, now


def _ints(text):
    return [int(v) for v in text.split(",") if v not in ("", "none")]


def _floats(text):
    return [float(v) for v in text.split(",") if v not in ("", "none")]


def _rates(hs, errs) -> tuple[float, float]:
    """Least-squares rate over all meshes and the rate between the two finest."""
    fine = float(np.log(errs[-1] / errs[-2]) / np.log(hs[-1] / hs[-2]))
    return _rate(hs, errs), fine


#: Meshes of every figure: quick (about two minutes in all) and full (``docs/schemes.md``).
MESHES = {
    "quick": {"n1d": "50,100", "n2d": "12,24", "nseg": "75,150", "h3d": "0.3,0.2",
              "nmms": "8,16", "sizes": "64", "m": "2,3", "m2d": "2,3",
              "cfl": "0.066"},
    "full": {"n1d": "200,400,800,1600", "n2d": "24,48,96", "nseg": "150,300,600,1200",
             "h3d": "0.2,0.14,0.1", "nmms": "16,32,64", "sizes": "354,708", "m": "2,3",
             "m2d": "2,3", "cfl": "0.033"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small meshes (< 3 minutes)")
    parser.add_argument("--schemes", default=",".join(COMPARED),
                        help="comma-separated schemes, name or name:limiter")
    parser.add_argument("--figures", default=",".join(FIGURES),
                        help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per scheme and size (default 2, --quick 1)")
    parser.add_argument("--no-3d", action="store_true", help="skip the gmsh ball")
    parser.add_argument("--cost-only", action="store_true", help="only the cost per step")
    parser.add_argument("--dt", type=float, default=DT, help="time step of the cost steps")
    parser.add_argument("--linear-solver", default="iterative", help="of the cost steps")
    parser.add_argument("--profile", action="store_true",
                        help="cost steps under cProfile: rank 0 prints where the time goes")
    parser.add_argument("--method", default="bdf2", help="time integrator of the Barenblatt runs")
    parser.add_argument("--shifts", default="0",
                        help="1D Barenblatt: mean error over these mesh shifts (fractions of h)")
    parser.add_argument("--initial", default="interpolant", choices=("interpolant", "mass"),
                        help="Barenblatt initial data: the interpolant, or scaled to the exact "
                             "mass")
    parser.add_argument("--seg-method", default="ie",
                        help="time integrator of the segregation runs (ie, bdf2: steps with "
                             "a negative density rejected)")
    parser.add_argument("--cfl", type=float, default=None,
                        help="dt / h of the Barenblatt and segregation runs (0.033, quick 0.066)")
    for key, what in (("n1d", "cells of the 1D Barenblatt meshes"),
                      ("n2d", "cells per side of the 2D Barenblatt meshes"),
                      ("nseg", "cells of the segregation meshes"),
                      ("h3d", "mesh sizes of the gmsh ball"),
                      ("nmms", "cells per side of the MMS meshes"),
                      ("sizes", "cells per side of the cost meshes"),
                      ("m", "exponents of the 1D Barenblatt runs"),
                      ("m2d", "exponents of the 2D Barenblatt runs; none: no 2D run")):
        parser.add_argument(f"--{key}", default=None, help=f"{what} (comma-separated)")
    args = parser.parse_args()
    if args.profile:
        PETSc.Log.begin()  # the event counts of the timed steps (print_events)
    schemes = args.schemes.split(",")
    mode = "quick" if args.quick else "full"
    mesh_of = {k: getattr(args, k) or v for k, v in MESHES[mode].items()}
    ns1, ns2, nseg = _ints(mesh_of["n1d"]), _ints(mesh_of["n2d"]), _ints(mesh_of["nseg"])
    hs3, nmms, sizes = _floats(mesh_of["h3d"]), _ints(mesh_of["nmms"]), _ints(mesh_of["sizes"])
    ms, m2d = _floats(mesh_of["m"]), _floats(mesh_of["m2d"])
    shifts = _floats(args.shifts)
    cfl = args.cfl or float(mesh_of["cfl"])
    figures = {"cost"} if args.cost_only else set(args.figures.split(","))
    if args.no_3d:
        figures.discard("ball")
    bad = figures - set(FIGURES)
    if bad:
        parser.error(f"--figures: unknown {sorted(bad)}, allowed {','.join(FIGURES)}")
    out = {"bench": "schemes", "schemes": schemes, "quick": args.quick, "ranks": COMM.size,
           "barenblatt_initial": args.initial, "barenblatt_shifts": args.shifts,
           "meshes": mesh_of, "figures": sorted(figures),
           "segregation_method": args.seg_method}
    keys = ["barenblatt_rate_2d", "barenblatt_rate_2d_fine", "barenblatt_error_2d",
            "overlap_rate", "overlap_rate_fine", "overlap", "interface_offset_h",
            "interface_offsets_h", "rejected_segregation",
            "newton_segregation", "barenblatt_rate_3d", "barenblatt_error_3d", "mms_rate_2d",
            "mms_rate_2d_fine", "mms_error_2d", "min_rel", "step_cost_ratio", "step_seconds",
            "newton_step", "newton_ratio", "unknowns"]
    for m in ms:
        keys += [f"barenblatt_rate_1d_m{m:g}", f"barenblatt_rate_1d_m{m:g}_fine",
                 f"barenblatt_error_1d_m{m:g}"]
    for m in m2d:
        keys += [f"barenblatt_rate_2d_m{m:g}", f"barenblatt_rate_2d_m{m:g}_fine",
                 f"barenblatt_error_2d_m{m:g}"]
    keys.append("barenblatt_measures")
    for key in keys:
        out[key] = {}

    def say(*a):
        if COMM.rank == 0:
            print(*a, flush=True)

    def fmt(errs, p=".2e"):
        return "[" + ", ".join(f"{e:{p}}" for e in errs) + "]"

    mins = {sch: [] for sch in schemes}
    clock = _Clock()
    # one figure at a time for all schemes, so that they are printed side by side
    clock.tick("barenblatt")
    if "barenblatt" in figures:
        for dim, m in [(1, m) for m in ms] + [(2, m) for m in m2d]:
            series, tag = f"{dim}d_m{m:g}", f"{dim}D m={m:g}"
            meas = out["barenblatt_measures"].setdefault(series, {})
            for sch in schemes:
                eh = []
                for n in (ns1 if dim == 1 else ns2):
                    # 1D: the mean over mesh shifts (the error depends on where the front
                    # sits in its cell, which a single uniform mesh per h samples at random)
                    runs = [barenblatt_error(sch, dim, m, n, mins[sch], args.method, cfl,
                                             measures=True, initial=args.initial, shift=sh)
                            for sh in (shifts if dim == 1 else [0.0])]
                    eh.append(({k: float(np.mean([r[0][k] for r in runs])) for k in runs[0][0]},
                               runs[0][1]))
                hs = [h for _, h in eh]
                table = {k: [e[k] for e, _ in eh] for k in eh[0][0]}
                meas[sch] = {k: dict(zip(("rate", "rate_fine"), _rates(hs, v)), errors=v)
                             for k, v in table.items() if not k.startswith("interpolant_")}
                if "interpolant" not in meas:  # the same for every scheme
                    meas["interpolant"] = {
                        k[len("interpolant_"):]: dict(zip(("rate", "rate_fine"), _rates(hs, v)),
                                                      errors=v)
                        for k, v in table.items() if k.startswith("interpolant_")}
                errs = table["interp"]
                r, rf = meas[sch]["interp"]["rate"], meas[sch]["interp"]["rate_fine"]
                keys = ([f"barenblatt_rate_1d_m{m:g}"] if dim == 1 else
                        [f"barenblatt_rate_2d_m{m:g}"] + (["barenblatt_rate_2d"] if m == 2
                                                          else []))
                for key in keys:
                    out[key][sch], out[key + "_fine"][sch] = r, rf
                    out[key.replace("rate", "error")][sch] = errs
                ns = ns1 if dim == 1 else ns2
                say(f"{sch}: Barenblatt {tag} {args.method} n={ns} L1 errors {fmt(errs)} rate "
                    f"{r:.2f} (finest pair {rf:.2f})")
                for k in MEASURES[1:]:
                    v = meas[sch][k]
                    say(f"    {k:9s} scheme {fmt(v['errors'])} rate {v['rate']:.2f} (finest "
                        f"{v['rate_fine']:.2f})" + (
                            "" if k not in meas["interpolant"] else
                            f" | interpolant {fmt(meas['interpolant'][k]['errors'])} rate "
                            f"{meas['interpolant'][k]['rate']:.2f} (finest "
                            f"{meas['interpolant'][k]['rate_fine']:.2f})"))
    clock.tick("segregation")
    if "segregation" in figures:
        for sch in schemes:
            seg = [segregation(sch, n, mins[sch], cfl, args.seg_method) for n in nseg]
            ov = [v[0] for v in seg]
            r, rf = _rates([v[2] for v in seg], ov)
            out["overlap"][sch], out["overlap_rate"][sch], out["overlap_rate_fine"][sch] = (
                ov, r, rf)
            out["interface_offset_h"][sch] = max(abs(v[1]) for v in seg)
            out["newton_segregation"][sch] = float(np.mean([v[3] for v in seg]))
            out["rejected_segregation"][sch] = [v[4] for v in seg]
            offsets = [v[1] for v in seg]
            out["interface_offsets_h"][sch] = offsets
            say(f"{sch}: segregation {args.seg_method} dt={cfl:g} h n={nseg} overlap "
                f"{fmt(ov)} rate {r:.2f} (finest pair {rf:.2f}), (interface - exact) / h "
                f"{fmt(offsets, '+.2f')}, Newton {out['newton_segregation'][sch]:.2f}, "
                f"rejected {out['rejected_segregation'][sch]}")
    clock.tick("ball")
    if "ball" in figures:
        meas = out["barenblatt_measures"].setdefault("3d_m2", {})
        for sch in schemes:
            table = [barenblatt_3d(sch, h, mins[sch], measures=True) for h in hs3]
            e3 = [t["interp"] for t in table]
            out["barenblatt_error_3d"][sch] = e3
            out["barenblatt_rate_3d"][sch] = _rate(hs3, e3)
            meas[sch] = {k: {"errors": [t[k] for t in table],
                             "rate": _rate(hs3, [t[k] for t in table])}
                         for k in ("exact", "interior")}
            meas.setdefault("interpolant", {"exact": {
                "errors": [t["interpolant_exact"] for t in table],
                "rate": _rate(hs3, [t["interpolant_exact"] for t in table])}})
            say(f"{sch}: Barenblatt 3D ball h={hs3} L1 errors {fmt(e3, '.3f')} rate "
                f"{out['barenblatt_rate_3d'][sch]:.2f}; against the profile "
                f"{fmt(meas[sch]['exact']['errors'], '.3f')} rate "
                f"{meas[sch]['exact']['rate']:.2f} (interpolant "
                f"{fmt(meas['interpolant']['exact']['errors'], '.3f')} rate "
                f"{meas['interpolant']['exact']['rate']:.2f})")
    clock.tick("mms")
    if "mms" in figures:
        for sch in schemes:
            em = [mms_error(sch, n) for n in nmms]
            r, rf = _rates([1.0 / n for n in nmms], em)
            out["mms_rate_2d"][sch], out["mms_rate_2d_fine"][sch] = r, rf
            out["mms_error_2d"][sch] = em
            say(f"{sch}: MMS 2D n={nmms} L2 errors {fmt(em)} rate {r:.2f} (finest pair "
                f"{rf:.2f})")
    clock.tick("cost")
    for sch in schemes:
        if mins[sch]:
            out["min_rel"][sch] = float(min(mins[sch]))
            say(f"{sch}: min rho / max rho over all runs {out['min_rel'][sch]:.2e}")
    base = schemes[0]
    out["cost_dt"] = args.dt
    out["cost_linear_solver"] = args.linear_solver
    for n in sizes if "cost" in figures else []:
        steps = args.steps or (1 if args.quick else 2)
        unknowns, secs, newton, failed = step_costs(schemes, n, steps, args.dt,
                                                    args.linear_solver, args.profile)
        key = str(unknowns)
        out["unknowns"][key] = unknowns
        out["step_seconds"][key] = secs
        out["newton_step"][key] = newton
        out["step_cost_ratio"][key] = {
            s: (secs[s] / secs[base] if secs[s] is not None and secs[base] else None)
            for s in schemes}
        out["newton_ratio"][key] = {
            s: (newton[s] / newton[base] if newton[s] is not None and newton[base] else None)
            for s in schemes}
        for sch, msg in failed.items():
            say(f"{sch}: step failed at {unknowns} unknowns, dt={args.dt:g}: {msg}")
        say(f"IE step at {unknowns} unknowns, dt={args.dt:g}, {args.linear_solver}: "
            + ", ".join(f"{s} {secs[s]:.2f} s (Newton {newton[s]:.1f}, cost x"
                        f"{out['step_cost_ratio'][key][s]:.2f})" for s in schemes
                        if secs[s] is not None))
    clock.tick(None)
    out["seconds"] = clock.seconds
    say("wall seconds per figure: " + ", ".join(f"{k} {v:.0f}" for k, v in clock.seconds.items()))
    say(json.dumps(out))


if __name__ == "__main__":
    main()
