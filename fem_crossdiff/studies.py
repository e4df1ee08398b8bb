"""Shared set-up of the propagation-of-chaos studies (``demos/study_*.py``).

All studies use the same 1D test case on the interval [-0.5, 1.5] with reflecting walls
(particles) and no-flux walls (PDE): two species with smooth, compactly supported initial
densities (raised-cosine bumps at 0.35 and 0.65), a = (1, 1.5), b = (0.5, 0.25), m = 2,
sigma = 0.02, T = 0.05. The walls are far from the mass on purpose: the particle drift sees the
pressure beyond a wall (empty space) while the FE model truncates its convolutions at the
wall, so near walls the two discretise slightly different models.

This module holds the case (:class:`Case1D`), the finite-element reference solutions
(:func:`fe_solve`: local (1.1) and nonlocal (1.5), P1 upwind, MUMPS), the particle runs
(:func:`run_particles`, particles of weight ``a_l M_l / N`` with the masses ``M_l`` of the
initial data, :meth:`Case1D.masses`), the distances (:func:`w1_to_fe`), the fitted slopes
(:func:`fit_slope`), the eps(N) law (:func:`eps_of_n`) and the output (:func:`write_outputs`:
CSV, log-log PNG, JSON). It imports DOLFINx (through :mod:`fem_crossdiff.compat`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import fem_crossdiff.compat  # noqa: F401  (MPI before DOLFINx)
from fem_crossdiff.compat import MPI, mesh
from fem_crossdiff.measures import density_to_weighted_samples
from fem_crossdiff.models import default_scheme
from fem_crossdiff.params import ModelParams, TimeParams
from fem_crossdiff.particles import (
    Box,
    GridDrift,
    InverseCDF1D,
    ParticleParams,
    gather_positions,
    init_state,
)
from fem_crossdiff.particles import step as particle_step
from fem_crossdiff.particles.distances import wasserstein_1d
from fem_crossdiff.solver import CrossDiffusionSolver

__all__ = [
    "CENTRES",
    "HALF_WIDTH",
    "EPS_OF_N_SWEEP",
    "Case1D",
    "bump",
    "eps_of_n",
    "fe_solve",
    "fit_slope",
    "kappa",
    "parse_args",
    "particle_params",
    "run_particles",
    "seed_stats",
    "w1_to_fe",
    "write_outputs",
]

# Centres and half-width of the initial bumps (support [c - w, c + w], inside [0, 1]).
CENTRES = (0.35, 0.65)
HALF_WIDTH = 0.2


def bump(c: float, w: float = HALF_WIDTH):
    """Unit-mass raised-cosine bump ``(1 + cos(pi (x - c) / w)) / (2 w)`` on ``|x - c| < w``.

    Args:
        c: Centre.
        w: Half-width of the support.

    Returns:
        ``f(x)``, vectorised; ``x`` is either a coordinate array ``(gdim, n)`` (the first row
        is used, as DOLFINx interpolation passes it) or a plain 1D array of positions.
    """

    def f(x):
        x0 = x[0] if np.ndim(x) > 1 else x
        return np.where(np.abs(x0 - c) < w, 1.0 + np.cos(np.pi * (x0 - c) / w), 0.0) / (2 * w)

    return f


@dataclass(frozen=True)
class Case1D:
    """The 1D test case of the studies.

    Attributes:
        a: Volume weights.
        b: Mobilities.
        m: Pressure exponent.
        sigma: Linear diffusion.
        T: Final time.
        dt: Time step of particles and PDE (snapshots align).
        kernel: Mollifier name.
        lo: Left wall.
        hi: Right wall.
    """

    a: tuple = (1.0, 1.5)
    b: tuple = (0.5, 0.25)
    m: float = 2.0
    sigma: float = 0.02
    T: float = 0.05
    dt: float = 5e-4
    kernel: str = "bump"
    lo: float = -0.5
    hi: float = 1.5

    def __post_init__(self):
        if len(self.a) != len(self.b) or len(self.a) > len(CENTRES):
            raise ValueError(f"a and b need the same length <= {len(CENTRES)}, got {self.a}, "
                             f"{self.b}")
        if not (self.T > 0 and self.dt > 0 and self.dt <= self.T):
            raise ValueError(f"need 0 < dt <= T, got dt={self.dt}, T={self.T}")

    @property
    def n(self) -> int:
        """Number of species."""
        return len(self.a)

    @property
    def n_steps(self) -> int:
        """Number of time steps to ``T``."""
        return int(round(self.T / self.dt))

    def box(self) -> Box:
        """The particle domain."""
        return Box((self.lo,), (self.hi,))

    def model(self) -> ModelParams:
        """The PDE coefficients."""
        return ModelParams(a=self.a, b=self.b, m=self.m, sigma=self.sigma)

    def initial(self) -> list:
        """Initial densities (callables of x), one per species."""
        return [bump(CENTRES[k]) for k in range(self.n)]

    def masses(self) -> tuple[float, ...]:
        """Masses ``int rho_k(0)`` of :meth:`initial`, one per species.

        The bumps have unit mass exactly (the particle weights ``a_l M_l / N`` are then the
        paper's ``a_l / N``); the particle runs pass these masses
        (:attr:`~fem_crossdiff.particles.ParticleParams.masses`).
        """
        return tuple(1.0 for _ in range(self.n))

    def samplers(self) -> list:
        """Exact samplers of (the fine piecewise-linear interpolants of) the initial data."""
        return [InverseCDF1D(lambda x, f=f: f(x), lo=self.lo, hi=self.hi, n_table=16385)
                for f in self.initial()]


def fe_solve(case: Case1D, cells: int, eps: float | None = None, comm=None,
             snapshots: bool = False, model: ModelParams | None = None, initial=None,
             msh=None, coupling: str = "linear"):
    """Solve the local (``eps=None``) or nonlocal model on ``[lo, hi]`` to ``case.T``.

    Args:
        case: The test case.
        cells: Number of mesh cells.
        eps: Mollifier radius of the nonlocal model (1.5); ``None``: the local system (1.1).
        comm: Communicator (default COMM_WORLD).
        snapshots: Also return ``[(t, g^eps)]`` at every step (nonlocal only).
        model: Override the coefficients (default ``case.model()``).
        initial: Override the initial data.
        msh: Reuse this mesh (so that solutions can be compared); default: a new one.
        coupling: Time coupling of the nonlocal potential ("linear": lagged, "implicit").

    Returns:
        ``(solver, snapshots or None)``.
    """
    comm = MPI.COMM_WORLD if comm is None else comm
    if msh is None:
        msh = mesh.create_interval(comm, cells, [case.lo, case.hi])
    kw = {}
    if eps is not None:
        from fem_crossdiff.models.nonlocal_system import NonlocalParams

        kw["nonlocal_params"] = NonlocalParams(eps=eps, kernel=case.kernel, coupling=coupling)
    # the local limit of the nonlocal discretisation is the local scheme of the same name (the
    # edge fluxes): with the local default the eps -> 0 error would include the schemes' O(h)
    # difference
    s = CrossDiffusionSolver(msh, model or case.model(), scheme=default_scheme("nonlocal"),
                             linear_solver="direct", **kw)
    s.set_initial(initial or case.initial())
    snaps = [(0.0, s.potential_field())] if snapshots else None

    def keep(solver, row):
        snaps.append((solver.t, solver.potential_field()))

    s.run(TimeParams(T=case.T, dt=case.dt), progress=False,
          callback=keep if snapshots else None)
    return s, snaps


def particle_params(case: Case1D, n_particles: int, eps: float, b=None, a=None,
                    masses=None):
    """Particle parameters of the case.

    Args:
        case: The test case.
        n_particles: Particles per species ``N``.
        eps: Mollifier radius.
        b: Override the mobilities (default ``case.b``).
        a: Override the volume weights (default ``case.a``).
        masses: Override the species masses (default ``case.masses()``, those of the initial
            data).

    Returns:
        The :class:`~fem_crossdiff.particles.ParticleParams`.
    """
    return ParticleParams(n_particles=n_particles, a=a or case.a, b=b or case.b,
                          sigma=case.sigma, m=case.m, eps=eps, kernel=case.kernel,
                          masses=case.masses() if masses is None else masses)


def run_particles(case: Case1D, n_particles: int, eps: float, seed: int, comm=None,
                  cells_per_eps: float = 16.0):
    """Run the particle system (1.6) with the grid drift to ``case.T``.

    Args:
        case: The test case.
        n_particles: Particles per species ``N``.
        eps: Mollifier radius.
        seed: Seed of the counter-based random streams.
        comm: MPI communicator (``None``: serial).
        cells_per_eps: Resolution of the drift grid.

    Returns:
        All positions, shape ``(n, N, 1)``, on every rank.
    """
    params = particle_params(case, n_particles, eps)
    box = case.box()
    state = init_state(params, case.samplers(), seed, box, comm)
    drift = GridDrift(cells_per_eps)
    for _ in range(case.n_steps):
        state = particle_step(state, case.dt, params, box, drift, comm)
    return gather_positions(state, comm, root=None)


def w1_to_fe(points: np.ndarray, rho) -> float:
    """``W_1`` between the empirical measure of 1D ``points`` and the FE density ``rho``.

    Args:
        points: Particle positions (any shape, flattened).
        rho: FE density (a DOLFINx function); negative values are clipped.

    Returns:
        The distance (same on every rank).
    """
    xq, wq = density_to_weighted_samples(rho, gather="all", clip_negative=True)
    return wasserstein_1d(points.reshape(-1), xq[:, 0], p=1.0, wy=wq)


def seed_stats(name: str, values) -> dict[str, float]:
    """Mean and standard error over independent seeds.

    Args:
        name: Key of the mean.
        values: One value per seed (at least two).

    Returns:
        ``{name: mean, name + "_se": standard error}``.
    """
    v = np.asarray(values, float)
    return {name: float(v.mean()), f"{name}_se": float(v.std(ddof=1) / np.sqrt(v.size))}


#: ``(cells, N values, seeds)`` of the eps(N) sweeps (studies 3 and 5), quick and full.
EPS_OF_N_SWEEP = {True: (400, [100, 400, 1600, 6400], [1, 2]),
                  False: (1600, [100, 400, 1600, 6400, 25600, 102400], [1, 2, 3, 4])}


def fit_slope(x, y) -> float:
    """Least-squares slope of ``log y`` against ``log x``.

    Args:
        x: Positive abscissae.
        y: Positive values.

    Returns:
        The fitted exponent.
    """
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.polyfit(lx, ly, 1)[0])


def parse_args(argv, name: str, description: str) -> argparse.Namespace:
    """Command line of a study: ``outdir`` and ``--quick``.

    Args:
        argv: Arguments (``None``: ``sys.argv[1:]``).
        name: Study name; the default ``outdir`` is ``output/<name>``.
        description: Help text.

    Returns:
        The namespace; ``quick`` is also set by the ``CI`` environment variable, ``outdir``
        is a :class:`~pathlib.Path`, ``quiet`` switches off the progress lines of :func:`say`.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("outdir", nargs="?", default=f"output/{name}")
    p.add_argument("--quick", action="store_true", help="small, fast settings (CI)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    args.quick = bool(args.quick or os.environ.get("CI"))
    args.outdir = Path(args.outdir)
    return args


def say(args, comm, text: str, t_start: float | None = None) -> None:
    """A progress line on rank 0's stderr (unless ``args.quiet``), with the elapsed time."""
    if getattr(args, "quiet", False) or comm.rank != 0:
        return
    import time

    from fem_crossdiff.log import get_logger

    elapsed = "" if t_start is None else f" ({time.perf_counter() - t_start:.1f} s)"
    get_logger(comm).info("%s%s", text, elapsed)


def write_outputs(comm, outdir: Path, name: str, rows: list[dict], series: dict,
                  xlabel: str, title: str, summary: dict, ylabel: str = "distance") -> None:
    """Rank 0: CSV table, printed table, log-log PNG with fitted slopes, JSON last line.

    Args:
        comm: Communicator.
        outdir: Output folder.
        name: File stem.
        rows: Table rows (dicts with the same keys).
        series: ``{label: (x, y, slope or None[, yerr])}`` curves of the plot; ``yerr``, the
            standard errors over seeds, is drawn as error bars.
        xlabel: Label of the x axis.
        title: Plot title.
        summary: The JSON object printed last.
        ylabel: Label of the y axis.
    """
    if comm.rank != 0:
        return
    outdir.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0])
    with open(outdir / f"{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    widths = [max(12, len(k)) for k in keys]
    print("  ".join(k.rjust(wd) for k, wd in zip(keys, widths, strict=True)))
    for r in rows:
        print("  ".join((f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k])).rjust(wd)
                        for k, wd in zip(keys, widths, strict=True)))
    from fem_crossdiff.plotting import save_figure

    save_figure(study_figure(series, xlabel, ylabel, title), outdir / f"{name}.png")
    print(json.dumps(summary))


def study_figure(series: dict, xlabel: str, ylabel: str, title: str):
    """A log-log plot of a study's curves: slopes in the legend, standard errors as bars.

    Args:
        series: ``{label: (x, y, slope or None[, yerr])}``.
        xlabel: Label of the x axis.
        ylabel: Label of the y axis.
        title: Title.

    Returns:
        The matplotlib figure (closed; save it with ``fem_crossdiff.plotting.save_figure``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(6.0, 4.4), layout="constrained")
    xs = []
    for label, (x, y, slope, *err) in series.items():
        lab = label if slope is None else f"{label} (slope {slope:.2f})"
        yerr = np.asarray(err[0], float) if err and err[0] is not None else None
        ax.errorbar(x, y, yerr=yerr, fmt="o-", ms=4, capsize=3, label=lab)
        xs.extend(np.asarray(x, float).tolist())
    ax.set_xscale("log")
    ax.set_yscale("log")
    # ticks at the sampled x values with plain labels; no minor labels (they overlap)
    ticks = np.unique(np.asarray(xs, float))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(labelsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    plt.close(fig)
    return fig


def kappa(d: int, m: float) -> float:
    """Exponent ``kappa = 4 + 2d(m-1)`` of (2.2): ``C(eps, T) ~ eps^(2+kappa) exp(T/eps^kappa)``.

    Args:
        d: Space dimension.
        m: Pressure exponent.

    Returns:
        ``kappa``.
    """
    return 4.0 + 2.0 * d * (m - 1.0)


def eps_of_n(n: int, eps_ref: float, n_ref: int, d: int, m: float) -> float:
    """Logarithmic law of Remark 1.4: ``eps(N) = eps_ref (ln N_ref / ln N)^(1 / kappa)``.

    From (2.2), ``C(eps, T) / N -> 0`` when ``exp(T / eps^kappa) = N^theta`` with ``theta < 1``,
    i.e. ``eps(N) = (T / (theta ln N))^(1 / kappa)``; the dropped constants of (2.2) are
    absorbed into the prefactor, fixed by ``eps(N_ref) = eps_ref``.

    Args:
        n: Particles per species ``N``.
        eps_ref: Radius at ``n_ref``.
        n_ref: Reference ``N``.
        d: Space dimension.
        m: Pressure exponent.

    Returns:
        ``eps(N)``.
    """
    return float(eps_ref * (np.log(n_ref) / np.log(n)) ** (1.0 / kappa(d, m)))
