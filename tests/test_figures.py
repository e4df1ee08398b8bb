"""Figures and the animation: the files exist and hold the expected panels (1 and 2 ranks).

The figure functions return their matplotlib Figure, so the panels (axes, titles, labels,
colour bars) are checked, not just the file. The sampled values are compared with the
solver's own extrema, which would fail if the gather to rank 0 mixed up the partition.
"""

from __future__ import annotations

import numpy as np
import pytest

from fem_crossdiff.compat import mesh
from fem_crossdiff.driver import run
from fem_crossdiff.observers import (
    AnimationObserver,
    DiagnosticsPlotObserver,
    ParticlePlotObserver,
    SnapshotObserver,
)
from fem_crossdiff.params import ModelParams, TimeParams
from fem_crossdiff.solver import CrossDiffusionSolver

N_STEPS = 8
T = 0.008
TP = TimeParams(T=T, dt=T / N_STEPS)


#: Where the initial data jump: between the nodes of every mesh of this module (cells of
#: 0.05 to 0.25 along x), so that no node gets either value by the last bit of its coordinate
#: (which depends on the number of ranks the mesh was built on).
JUMP = 0.53


def _blobs(x):
    return np.where(x[0] < JUMP, 1.0, 0.0)


def _solver(msh):
    s = CrossDiffusionSolver(msh, ModelParams(a=(1.0, 2.0), b=(1.0, 0.5), m=2.0, sigma=1e-3))
    s.set_initial([_blobs, lambda x: np.where(x[0] >= JUMP, 0.5, 0.0)])
    return s


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    """One short 2D run with every figure observer (shared by the tests of this module)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    folder = tmp_path_factory.mktemp("fig") if comm.rank == 0 else None
    from pathlib import Path

    folder = Path(comm.bcast(str(folder) if folder else None, root=0))
    msh = mesh.create_rectangle(comm, [[0.0, 0.0], [2.0, 1.0]], [16, 8])
    s = _solver(msh)
    snap = SnapshotObserver(folder / "densities.png", T, "test", color_range="run")
    anim = AnimationObserver(folder / "run.gif", T, "gif", count=3, fps=5)
    diag = DiagnosticsPlotObserver(folder / "diagnostics.png", "test")
    rows = run(s, TP, [snap, anim, diag], progress=False)
    return dict(comm=comm, folder=folder, solver=s, snap=snap, anim=anim, rows=rows)


def test_snapshot_panels(run2d):
    from fem_crossdiff import plotting

    snap = run2d["snap"]
    assert len(snap.frames) == 4  # t = 0, T/3, 2T/3, T
    if run2d["comm"].rank != 0:
        return
    assert (run2d["folder"] / "densities.png").is_file()
    fig = snap.figures[0]
    images = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(images) == 3 * 4  # 2 species rows + the segregation row, 4 times
    assert len(bars) == 2  # one per species over the run
    assert {b.get_ylabel() for b in bars} == {r"density $\rho_{1}$", r"density $\rho_{2}$"}
    assert all(ax.get_xlabel() == "x" and ax.get_ylabel() == "y" for ax in images)
    assert sum("segregation" in ax.get_title() for ax in images) == 4
    # axes in domain units: the rectangle is [0, 2] x [0, 1]
    lo, hi = images[0].get_xlim()
    assert lo == pytest.approx(0.0, abs=0.03) and hi == pytest.approx(2.0, abs=0.03)
    # colour range of the whole run: the first frame's maximum of species 1 is 1
    assert bars[0].get_ylim()[1] == pytest.approx(1.0, rel=1e-6)
    two = [snap.frames[0], snap.frames[-1]]
    per_frame = plotting.snapshot_figure(snap._frames.sampler, two, color_range="frame")
    assert sum(ax.get_label() == "<colorbar>" for ax in per_frame.axes) == 2 * 2


def test_sampled_values_match_solver(run2d):
    """The gathered nodal values are the solver's (min/max of the final state)."""
    s, snap = run2d["solver"], run2d["snap"]
    mn, mx = s.extrema()
    if run2d["comm"].rank == 0:
        last = snap.frames[-1]
        assert last["t"] == pytest.approx(T)
        for k in range(2):
            assert last["values"][k].max() == pytest.approx(mx[k], rel=1e-12)
            assert last["values"][k].min() == pytest.approx(mn[k], rel=1e-12, abs=1e-14)


def test_animation_frames(run2d):
    """The GIF has one frame per target time (3 over 8 equal steps), read back with Pillow."""
    anim = run2d["anim"]
    assert len(anim.frames) == 3
    if run2d["comm"].rank != 0:
        return
    from PIL import Image

    path = run2d["folder"] / "run.gif"
    with Image.open(path) as im:
        assert im.n_frames == 3
        assert im.size[0] > 200
    ts = [f["t"] for f in anim.frames]
    assert ts == pytest.approx([0.0, T / 2, T])


def test_animation_rejects_bad_format():
    from fem_crossdiff.errors import ParameterError

    with pytest.raises(ParameterError, match="animation"):
        AnimationObserver("x.avi", 1.0, "avi")
    with pytest.raises(ParameterError, match="animation_frames"):
        AnimationObserver("x.gif", 1.0, "gif", count=1)


def test_diagnostics_panels(run2d):
    if run2d["comm"].rank != 0:
        return
    from fem_crossdiff.plotting import diagnostics_figure

    assert (run2d["folder"] / "diagnostics.png").is_file()
    rows = [dict(r) for r in run2d["rows"]]
    rows[3]["rejected"] = 2  # a step that followed two rejections is marked
    fig = diagnostics_figure(rows, 2)
    titles = [ax.get_title() for ax in fig.axes]
    for t in ("relative mass drift", "energy", "time step", "solver iterations",
              "minimum density", "maximum density"):
        assert t in titles
    ylabels = {ax.get_ylabel() for ax in fig.axes}
    assert {"dt", "Newton iterations per step", "Krylov iterations per step"} <= ylabels
    dt_ax = fig.axes[titles.index("time step")]
    labels = [line.get_label() for line in dt_ax.get_lines()]
    assert "after rejections (2 in all)" in labels
    max_ax = fig.axes[titles.index("maximum density")]
    y = max_ax.get_lines()[0].get_ydata()
    assert y[0] == pytest.approx(1.0)  # species 1 starts at 1


def test_particles_figure(comm, mpi_tmp_path):
    """Particles over the FE density, and the projected empirical measure next to it."""
    from fem_crossdiff.particles import ParticleParams, init_state
    from fem_crossdiff.particles.mesh_domain import FEDensitySampler, MeshDomain

    msh = mesh.create_unit_square(comm, 10, 10)
    s = _solver(msh)
    params = ParticleParams(400, (1.0, 2.0), (1.0, 0.5), 1e-3, 2.0, 0.2)
    species = [s.species(k) for k in range(2)]
    state = init_state(params, [FEDensitySampler(f) for f in species], 3, MeshDomain(msh), comm)

    class Holder:
        pass

    holder = Holder()
    holder.state = state
    path = mpi_tmp_path / "particles.png"
    obs = ParticlePlotObserver(holder, path)
    obs.finish(s, None)
    if comm.rank == 0:
        assert path.is_file()
    # the same figure, inspected
    from fem_crossdiff import plotting
    from fem_crossdiff.measures import empirical_dg0_histogram
    from fem_crossdiff.particles import gather_positions

    sampler = plotting.FieldSampler(msh)
    dens = sampler.sample(species)
    hist = [empirical_dg0_histogram(msh, state.of_species(k), outside="drop") for k in range(2)]
    cells = sampler.sample_cells(hist)
    pos = gather_positions(state, comm, root=0)
    if comm.rank != 0:
        return
    # the histogram has mass 1 on each species' support (the cell areas are 1/200 each)
    for k in range(2):
        assert np.sum(cells[k]) / 200 == pytest.approx(1.0, rel=1e-12)
    fig = plotting.particles_figure(sampler, dens, pos, cells)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 4
    assert sum("particles" in ax.get_title() for ax in panels) == 2
    assert sum("empirical" in ax.get_title() for ax in panels) == 2
    clouds = [c for ax in panels for c in ax.collections if c.get_offsets().shape[0] == 400]
    assert len(clouds) == 2


def test_line_and_slices(comm, mpi_tmp_path):
    """1D runs get curves; 3D runs get mid-plane slices with the nodal maximum."""
    s1 = _solver(mesh.create_interval(comm, 20, [0.0, 1.0]))
    snap1 = SnapshotObserver(mpi_tmp_path / "line.png", 0.002, count=2)
    run(s1, TimeParams(T=0.002, dt=0.001), [snap1], progress=False)
    s3 = _solver(mesh.create_unit_cube(comm, 4, 4, 4))
    snap3 = SnapshotObserver(mpi_tmp_path / "cube.png", 0.002, count=2)
    run(s3, TimeParams(T=0.002, dt=0.002), [snap3], progress=False)
    if comm.rank != 0:
        return
    assert (mpi_tmp_path / "line.png").is_file()
    assert (mpi_tmp_path / "cube.png").is_file() and (mpi_tmp_path / "cube_slices.png").is_file()
    fig = snap1.figures[0]
    assert len(fig.axes) == 2 and len(fig.axes[0].get_lines()) == 2
    first = snap3.frames[0]["values"][0]  # species 1 at t = 0: 1 for x < JUMP, else 0
    # sampled inside cells: the barycentric weights round (measured: 1 + 2e-16, -1.6e-16)
    assert np.nanmax(first[2]) == pytest.approx(1.0, rel=1e-12)
    assert np.nanmin(first[2]) == pytest.approx(0.0, abs=1e-12)
    assert len(snap3.figures) == 2
    fig = snap3.figures[1]
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 9  # 2 species + segregation, 3 planes
    assert {ax.get_xlabel() + ax.get_ylabel() for ax in panels} == {"yz", "xz", "xy"}


def test_study_figure_error_bars_and_ticks():
    """Study plots: y label, error bars from the standard errors, plain ticks at the N values."""
    from matplotlib.container import ErrorbarContainer
    from matplotlib.ticker import NullFormatter

    from fem_crossdiff.studies import study_figure

    N = np.array([100.0, 400.0, 1600.0])
    w1 = 0.05 * N ** -0.5
    fig = study_figure({"W1": (N, w1, -0.5, 0.1 * w1), "ref": (N, w1, None)}, "N", "W1 to FE",
                       "study")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "W1 to FE" and ax.get_xlabel() == "N"
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2 and bars[0].has_yerr and not bars[1].has_yerr
    segs = bars[0].lines[2][0].get_segments()
    assert segs[0][1][1] - segs[0][0][1] == pytest.approx(0.2 * w1[0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100", "400", "1600"]
    assert isinstance(ax.xaxis.get_minor_formatter(), NullFormatter)
    assert isinstance(ax.yaxis.get_minor_formatter(), NullFormatter)
    assert "slope -0.50" in ax.get_legend().get_texts()[0].get_text()


def test_api_writes_final_state(comm, mpi_tmp_path, monkeypatch):
    """``solver.run(vtx_path=..., output_every=2)`` writes t = 0, every 2nd step and the end."""
    from fem_crossdiff.observers import FieldObserver

    times = []
    write = FieldObserver._write

    def recording(self, solver, step):
        times.append(solver.t)
        write(self, solver, step)

    monkeypatch.setattr(FieldObserver, "_write", recording)
    s = _solver(mesh.create_interval(comm, 10, [0.0, 1.0]))
    s.run(TimeParams(T=0.003, dt=0.001), vtx_path=mpi_tmp_path / "rho.bp", output_every=2,
          progress=False)
    assert times == pytest.approx([0.0, 0.002, 0.003])
    assert (mpi_tmp_path / "rho.bp").is_dir()
