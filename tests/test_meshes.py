"""The gmsh geometry builders: measures, boundary tags, rank invariance, .msh I/O, errors.

Every builder is checked at a coarse mesh size against its exact domain measure and the exact
measure of each tagged boundary piece. Tolerances: polygons/polyhedra (interval, rectangle,
L-shape, box) are meshed exactly, relative 1e-12; curved domains with order-1 (inscribed
polygon) geometry have relative errors ~ theta^2 / 6 for areas and theta^2 / 24 for lengths,
theta = h / r the angle subtended by a boundary edge, so they get relative 2e-2 at the h used
(the ball uses order-2 geometry and 1e-3).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import ufl

from fem_crossdiff import meshes
from fem_crossdiff.compat import MPI, fem, mesh
from fem_crossdiff.errors import ParameterError

gmsh = pytest.importorskip("gmsh")

# name -> (params, relative tolerance on the domain and boundary measures)
CASES = {
    "interval": ({"a": -0.5, "b": 1.5, "h": 0.3}, 1e-12),
    "rectangle": ({"lower": (0.0, -1.0), "upper": (2.0, 0.5), "h": 0.3}, 1e-12),
    "disk": ({"center": (0.3, -0.2), "radius": 1.0, "h": 0.2}, 2e-2),
    "ellipse": ({"rx": 1.0, "ry": 0.6, "h": 0.15}, 2e-2),
    "annulus": ({"inner_radius": 0.5, "outer_radius": 1.0, "h": 0.1}, 2e-2),
    "l_shape": ({"size": 2.0, "cut": 0.8, "h": 0.25}, 1e-12),
    "rectangle_with_obstacles": (
        {"upper": (2.0, 1.0), "obstacles": ((0.5, 0.5, 0.25), (1.4, 0.45, 0.3)), "h": 0.1},
        2e-2,
    ),
    "box": ({"lower": (0.0, 0.0, -0.5), "upper": (1.0, 0.5, 0.5), "h": 0.3}, 1e-12),
    "ball": ({"radius": 1.0, "h": 0.3, "order": 2}, 1e-3),  # order-2 geometry: ~1e-4 measured
}


def _total(comm, form) -> float:
    return comm.allreduce(fem.assemble_scalar(fem.form(form)), op=MPI.SUM)


def _all_ranks(comm, flag: bool) -> bool:
    return comm.allreduce(bool(flag), op=MPI.LAND)


def test_registry_is_complete():
    assert set(CASES) == set(meshes.BUILDERS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_builder_measures_and_tags(comm, name):
    params, rtol = CASES[name]
    geo = meshes.build(name, comm, **params)
    msh = geo.mesh
    tdim = msh.topology.dim
    expected_dim = {"interval": 1, "box": 3, "ball": 3}.get(name, 2)
    assert tdim == msh.geometry.dim == expected_dim
    assert geo.volume_exact is not None and geo.volume_exact > 0

    # Valid cells: every cell's measure (DG0 test function against dx) is positive.
    V0 = fem.functionspace(msh, ("DG", 0))
    cell_vol = fem.assemble_vector(fem.form(ufl.TestFunction(V0) * ufl.dx)).array
    nloc = msh.topology.index_map(tdim).size_local
    min_vol = comm.allreduce(cell_vol[:nloc].min() if nloc else np.inf, op=MPI.MIN)
    assert min_vol > 0.0

    volume = _total(comm, 1.0 * ufl.dx(domain=msh))
    assert abs(volume - geo.volume_exact) <= rtol * geo.volume_exact, (volume, geo.volume_exact)

    # Cell tags: all cells carry the domain tag.
    ct = geo.cell_tags
    owned_tagged = np.count_nonzero((ct.indices < nloc) & (ct.values == meshes.DOMAIN_TAG))
    assert comm.allreduce(owned_tagged, op=MPI.SUM) == msh.topology.index_map(tdim).size_global

    # Each boundary tag exists and measures the exact perimeter piece.
    ds = geo.ds()
    assert set(geo.boundary_names) == set(geo.boundary_exact)
    for key, tag in geo.boundary_names.items():
        exact = geo.boundary_exact[key]
        measured = _total(comm, 1.0 * ds(tag))
        assert abs(measured - exact) <= rtol * exact, (key, measured, exact)

    # The tagged facets are exactly the exterior facets (owned ones, compared rank-locally).
    nf = msh.topology.index_map(tdim - 1).size_local
    ft = geo.facet_tags
    tagged = ft.indices[(ft.indices < nf) & np.isin(ft.values, list(geo.boundary_names.values()))]
    exterior = meshes.exterior_facets(geo)
    mismatch = np.setxor1d(tagged, exterior).size + (tagged.size - np.unique(tagged).size)
    assert comm.allreduce(mismatch, op=MPI.SUM) == 0
    assert comm.allreduce(exterior.size, op=MPI.SUM) > 0
    total_ds = _total(comm, 1.0 * ufl.ds(domain=msh))
    assert total_ds == pytest.approx(sum(_total(comm, 1.0 * ds(t))
                                         for t in geo.boundary_names.values()), rel=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rank_count_invariance(comm, name):
    """The mesh built on ``comm`` equals the one built serially on each rank."""
    params, _ = CASES[name]
    params = {**params, "h": params["h"] * 1.5} if name in ("box", "ball") else params

    def fingerprint(c):
        geo = meshes.build(name, c, **params)
        msh = geo.mesh
        x = ufl.SpatialCoordinate(msh)
        tdim = msh.topology.dim
        return np.array([
            msh.topology.index_map(tdim).size_global,
            msh.topology.index_map(0).size_global,
            _total(c, 1.0 * ufl.dx(domain=msh)),
            _total(c, ufl.inner(x, x) * ufl.dx(domain=msh)),
            _total(c, x[0] ** 3 * ufl.ds(domain=msh)),
        ])

    parallel, serial = fingerprint(comm), fingerprint(MPI.COMM_SELF)
    assert _all_ranks(comm, np.allclose(parallel, serial, rtol=1e-12, atol=1e-14))


def test_curved_boundary_convergence(comm):
    """Disk area error: second order in h for affine cells, far smaller for order=2 geometry."""
    errors = []
    for h in (0.2, 0.1):
        geo = meshes.disk(comm, radius=1.0, h=h)
        errors.append(abs(_total(comm, 1.0 * ufl.dx(domain=geo.mesh)) - math.pi) / math.pi)
    rate = math.log2(errors[0] / errors[1])
    assert 1.7 < rate < 2.3, (errors, rate)
    geo2 = meshes.disk(comm, radius=1.0, h=0.1, order=2)
    err2 = abs(_total(comm, 1.0 * ufl.dx(domain=geo2.mesh)) - math.pi) / math.pi
    assert err2 < errors[1] / 100, (err2, errors)


def test_quadrilateral_rectangle(comm):
    geo = meshes.rectangle(comm, lower=(0.0, 0.0), upper=(1.5, 1.0), h=0.2, quadrilateral=True)
    msh = geo.mesh
    assert msh.topology.cell_type == mesh.CellType.quadrilateral
    # Structured: ceil(1.5 / 0.2) x ceil(1.0 / 0.2) cells.
    assert msh.topology.index_map(2).size_global == 8 * 5
    assert _total(comm, 1.0 * ufl.dx(domain=msh)) == pytest.approx(1.5, rel=1e-12)
    ds = geo.ds()
    assert _total(comm, 1.0 * ds(geo.tag("top"))) == pytest.approx(1.5, rel=1e-12)
    assert _total(comm, 1.0 * ds(geo.tag("left"))) == pytest.approx(1.0, rel=1e-12)


def test_ellipse_orientation(comm):
    """With ry > rx the major axis is along y: the second moment of x is pi rx^3 ry / 4."""
    rx, ry = 0.5, 1.0
    geo = meshes.ellipse(comm, center=(1.0, 2.0), rx=rx, ry=ry, h=0.08, order=2)
    x = ufl.SpatialCoordinate(geo.mesh)
    mx = _total(comm, (x[0] - 1.0) ** 2 * ufl.dx(domain=geo.mesh))
    my = _total(comm, (x[1] - 2.0) ** 2 * ufl.dx(domain=geo.mesh))
    assert mx == pytest.approx(math.pi * rx**3 * ry / 4, rel=1e-3)
    assert my == pytest.approx(math.pi * rx * ry**3 / 4, rel=1e-3)


def test_read_msh_round_trip(comm, mpi_tmp_path):
    params = {"inner_radius": 0.3, "outer_radius": 1.0, "h": 0.15}
    path = meshes.write_msh(mpi_tmp_path / "annulus.msh", "annulus", comm, **params)
    assert _all_ranks(comm, path.name == "annulus.msh")
    read = meshes.read_msh(path, comm, gdim=2)
    built = meshes.build("annulus", comm, **params)
    assert read.boundary_names == {"inner": 1, "outer": 2} == built.boundary_names
    assert read.volume_exact is None
    for key, tag in built.boundary_names.items():
        a = _total(comm, 1.0 * read.ds()(tag))
        b = _total(comm, 1.0 * built.ds()(tag))
        assert a == pytest.approx(b, rel=1e-12), key
    va = _total(comm, 1.0 * ufl.dx(domain=read.mesh))
    vb = _total(comm, 1.0 * ufl.dx(domain=built.mesh))
    assert va == pytest.approx(vb, rel=1e-12)
    ncells = [g.mesh.topology.index_map(2).size_global for g in (read, built)]
    assert ncells[0] == ncells[1]


def test_read_msh_user_file(comm, mpi_tmp_path):
    """A .msh written by plain gmsh calls (as a user would), with a named boundary group."""
    path = mpi_tmp_path / "user_square.msh"
    if comm.rank == 0:
        gmsh.initialize(interruptible=False)
        try:
            gmsh.option.setNumber("General.Terminal", 0)
            gmsh.model.add("user")
            s = gmsh.model.occ.addRectangle(0, 0, 0, 2.0, 0.5)
            gmsh.model.occ.synchronize()
            curves = [c for _, c in gmsh.model.getBoundary([(2, s)], oriented=False)]
            left = [c for c in curves if gmsh.model.occ.getCenterOfMass(1, c)[0] < 1e-12]
            gmsh.model.addPhysicalGroup(2, [s], 5, name="fluid")
            gmsh.model.addPhysicalGroup(1, [c for c in curves if c not in left], 9, name="wall")
            gmsh.model.addPhysicalGroup(1, left, 4)  # unnamed
            gmsh.option.setNumber("Mesh.MeshSizeMax", 0.2)
            gmsh.model.mesh.generate(2)
            gmsh.write(str(path))
        finally:
            gmsh.finalize()
    comm.barrier()
    geo = meshes.read_msh(path, comm, gdim=None)
    assert geo.mesh.geometry.dim == 2
    assert geo.boundary_names == {"wall": 9, "tag_4": 4}
    assert _total(comm, 1.0 * geo.ds()(geo.tag("wall"))) == pytest.approx(4.5, rel=1e-12)
    assert _total(comm, 1.0 * geo.ds()(geo.tag("tag_4"))) == pytest.approx(0.5, rel=1e-12)
    assert _total(comm, 1.0 * geo.dx()(5)) == pytest.approx(1.0, rel=1e-12)


def test_read_msh_missing_and_corrupt(comm, mpi_tmp_path):
    missing = mpi_tmp_path / "nowhere.msh"
    with pytest.raises(FileNotFoundError, match="nowhere.msh"):
        meshes.read_msh(missing, comm, gdim=2)
    corrupt = mpi_tmp_path / "corrupt.msh"
    if comm.rank == 0:
        corrupt.write_text("$MeshFormat\nthis is not a mesh\n")
    comm.barrier()
    with pytest.raises(meshes.GmshError, match="corrupt.msh"):
        meshes.read_msh(corrupt, comm, gdim=2)
    if comm.rank == 0:
        assert not gmsh.isInitialized()
    with pytest.raises(ValueError, match="gdim"):
        meshes.read_msh(corrupt, comm, gdim=4)


def test_gmsh_failure_raises_everywhere_and_cleans_up(comm, mpi_tmp_path):
    """A gmsh failure on rank 0 only (unwritable path) raises on every rank; gmsh is finalised."""
    bad = mpi_tmp_path / "no" / "such" / "folder" / "disk.msh"
    raised = False
    try:
        meshes.write_msh(bad, "disk", comm, h=0.5)
    except meshes.GmshError as exc:
        raised = "disk" in str(exc)
    assert _all_ranks(comm, raised)
    if comm.rank == 0:
        assert not gmsh.isInitialized()


def test_caller_gmsh_session_is_respected(comm):
    """With gmsh initialised by the caller, its model, options and session survive a build."""
    if comm.rank == 0:
        gmsh.initialize(interruptible=False)
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.add("mine")
        gmsh.model.occ.addBox(0, 0, 0, 1, 1, 1)
        gmsh.model.occ.synchronize()
        gmsh.option.setNumber("Mesh.MeshSizeMax", 7.0)
    try:
        geo = meshes.disk(comm, radius=0.5, h=0.1)
        ok = True
        if comm.rank == 0:
            ok = (gmsh.isInitialized() and gmsh.model.getCurrent() == "mine"
                  and gmsh.option.getNumber("Mesh.MeshSizeMax") == 7.0
                  and gmsh.model.getEntities(3) == [(3, 1)]
                  and not any(m.startswith("meshes_") for m in gmsh.model.list()))
    finally:
        if comm.rank == 0:
            gmsh.finalize()
    assert _all_ranks(comm, ok)
    assert _total(comm, 1.0 * ufl.dx(domain=geo.mesh)) == pytest.approx(math.pi / 4, rel=2e-2)


def test_ghost_modes(comm):
    """Default shared_facet ghosting (ghost cells in parallel) and ghost_mode='none' (none)."""
    ghosts = {}
    for mode in ("shared_facet", "none"):
        geo = meshes.annulus(comm, inner_radius=0.4, h=0.2, ghost_mode=mode)
        ghosts[mode] = comm.allreduce(geo.mesh.topology.index_map(2).num_ghosts, op=MPI.SUM)
        assert _total(comm, 1.0 * geo.ds()(geo.tag("outer"))) == pytest.approx(
            2 * math.pi, rel=2e-2)
        # No partition-boundary facet is counted as exterior in either mode.
        total = _total(comm, 1.0 * ufl.ds(domain=geo.mesh))
        assert total == pytest.approx(_total(comm, 1.0 * geo.ds()((1, 2))), rel=1e-12)
    assert ghosts["none"] == 0
    assert (ghosts["shared_facet"] > 0) == (comm.size > 1)


def test_unknown_names(comm):
    with pytest.raises(ParameterError, match=r"builder = 'donut': .*one of annulus, ball") as e:
        meshes.build("donut", comm)
    assert (e.value.key, e.value.value) == ("builder", "donut")
    with pytest.raises(ParameterError, match=r"unknown parameter of builder 'ellipse'.*rx") as e:
        meshes.build("ellipse", comm, radius=1.0)
    assert (e.value.key, e.value.value) == ("radius", 1.0)
    geo = meshes.build("interval", comm, h=0.5)
    with pytest.raises(KeyError, match="has no boundary 'top'"):
        geo.tag("top")


BAD = [  # (builder, parameters, ParameterError.key, pattern of the message)
    ("disk", {"h": 0.0}, "h", "h must be > 0"),
    ("disk", {"h": -0.1}, "h", r"h = -0\.1: h must be > 0"),
    ("disk", {"h": float("nan")}, "h", "h must be finite"),
    ("disk", {"h": 5.0}, "h", "h must be <= the domain size 2"),
    ("disk", {"h": True}, "h", "h must be a real number"),
    ("disk", {"radius": 0.0}, "radius", "radius must be > 0"),
    ("disk", {"center": (0.0, 0.0, 0.0)}, "center", "center must have 2 coordinates"),
    ("disk", {"center": ("a", 0.0)}, "center[0]", r"center\[0\] must be a real number"),
    ("disk", {"order": 3}, "order", "order must be one of 1, 2"),
    ("ellipse", {"ry": -1.0}, "ry", "ry must be > 0"),
    ("annulus", {"inner_radius": 1.0, "outer_radius": 1.0}, "inner_radius",
     "inner_radius must be < outer_radius = 1.0"),
    ("annulus", {"inner_radius": 2.0, "outer_radius": 1.0}, "inner_radius",
     "inner_radius must be < outer"),
    ("interval", {"a": 1.0, "b": 0.0}, "b", "b must be > a = 1.0"),
    ("rectangle", {"upper": (1.0, 0.0)}, "upper", "upper must be > lower"),
    ("rectangle", {"quadrilateral": "yes"}, "quadrilateral", "quadrilateral must be a bool"),
    ("l_shape", {"size": 1.0, "cut": 1.0}, "cut", "cut must be < size"),
    ("rectangle_with_obstacles", {"obstacles": ((0.1, 0.5, 0.2),)}, "obstacles[0]",
     "touches the outer bound"),
    ("rectangle_with_obstacles", {"obstacles": ((1.0, 0.9, 0.1),)}, "obstacles[0]",
     "touches the outer bound"),
    ("rectangle_with_obstacles", {"obstacles": ((0.5, 0.5, 0.2), (0.8, 0.5, 0.15))},
     "obstacles[1]", r"obstacles\[1\].*overlaps or touches obstacles\[0\]"),
    ("rectangle_with_obstacles", {"obstacles": ((0.5, 0.5, -0.2),)}, "obstacles[0]",
     r"obstacles\[0\] radius must be > 0"),
    ("rectangle_with_obstacles", {"obstacles": ()}, "obstacles", "at least one"),
    ("box", {"lower": (0.0, 0.0), "upper": (1.0, 1.0)}, "lower",
     "lower must have 3 coordinates"),
    ("ball", {"radius": float("inf")}, "radius", "radius must be finite"),
    ("ball", {"ghost_mode": "full"}, "ghost_mode", "ghost_mode must be one of"),
    ("interval", {"ghost_mode": "none"}, "ghost_mode", "ghost_mode 'none' is not supported for 1D"),
]


@pytest.mark.parametrize(("name", "params", "key", "match"), BAD)
def test_bad_parameters_raise_on_every_rank(comm, name, params, key, match):
    """A ParameterError keyed by the parameter's name, on every rank, before gmsh runs."""
    raised = False
    try:
        meshes.build(name, comm, **params)
    except ParameterError as exc:
        raised = exc.key == key and re.search(match, str(exc)) is not None
    assert _all_ranks(comm, raised)
    # Validation happens before gmsh: rank 0 must not have been left with an open session.
    if comm.rank == 0:
        assert not gmsh.isInitialized()
