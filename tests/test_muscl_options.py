"""The ``"muscl"`` options: limiter objects carry the tuning numbers, per solver, validated.

The defaults are those of the golden values (``tests/test_golden_models.py``); here: the
options import without DOLFINx, bad values are ``ParameterError`` naming the field, and two
solvers in one process can differ (a tuning number is no longer a module global).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from fem_crossdiff.compat import MPI, mesh
from fem_crossdiff.errors import ParameterError
from fem_crossdiff.models.muscl.options import (
    LIMITER_CLASSES,
    MusclOptions,
    Sensor,
    Smooth,
    SmoothSensor,
    VanLeer,
    as_limiter,
)
from fem_crossdiff.params import ModelParams


def test_options_import_without_dolfinx():
    """``fem_crossdiff.models.muscl.options`` is numpy-free and DOLFINx-free."""
    code = ("import sys; from fem_crossdiff.models.muscl import options, MusclOptions; "
            "print('dolfinx' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stdout + out.stderr


def test_names_and_objects():
    """Every limiter name gives its object; a limiter equals its name and its equal values."""
    assert [as_limiter(name).name for name in LIMITER_CLASSES] == list(LIMITER_CLASSES)
    assert MusclOptions().limiter == SmoothSensor() == "smooth-sensor"
    # a study file's table reads back to the same options, tuning numbers included
    opts = MusclOptions(limiter=SmoothSensor(width=(0.9, 0.3)), jacobian="mf")
    assert MusclOptions.from_dict(opts.to_dict()) == opts
    assert as_limiter({"name": "sensor", "slope": 3.0}) == Sensor(slope=3.0)
    assert SmoothSensor(width=(0.5, 0.2)) != SmoothSensor()
    assert SmoothSensor(width=(0.5, 0.2)) == "smooth-sensor"
    assert VanLeer() != Sensor() and hash(Smooth()) == hash(Smooth())


@pytest.mark.parametrize(("make", "key"), [
    (lambda: MusclOptions(limiter="sensr"), "limiter"),
    (lambda: MusclOptions(jacobian="exakt"), "jacobian"),
    (lambda: MusclOptions(preconditioner="lu"), "preconditioner"),
    (lambda: Sensor(band=(0.4, 0.15)), "limiter.band"),
    (lambda: Smooth(k=-1.0), "limiter.k"),
    (lambda: Smooth(p=3), "limiter.p"),
    (lambda: SmoothSensor(width=(1.0, 0.0)), "limiter.width"),
])
def test_bad_options_name_the_field(make, key):
    """Bad values fail at construction, naming the field."""
    with pytest.raises(ParameterError) as err:
        make()
    assert err.value.key == key


def test_two_solvers_differ_by_their_limiter_values():
    """A different ``k`` changes the residual of one solver and not the other's."""
    from fem_crossdiff.solver import CrossDiffusionSolver

    p = ModelParams(a=(1.0, 1.5), b=(1.0, 0.6), m=2.5, sigma=0.05)
    res = []
    for lim in (SmoothSensor(), SmoothSensor(k=12.0), "smooth-sensor"):
        s = CrossDiffusionSolver(mesh.create_unit_square(MPI.COMM_SELF, 6, 6), p,
                                 scheme="muscl", limiter=lim)
        s.set_initial([lambda x: 0.55 + 0.3 * np.sin(2.1 * x[0] + 0.7 * x[1] + 0.3),
                       lambda x: 0.35 + 0.2 * np.cos(1.7 * x[0] - 1.9 * x[1] + 0.5)])
        rho = s.rho.x.array.reshape(-1, 2)
        s.model.begin_step(rho)
        res.append(s.model.residual(rho))
        assert s.model.options.limiter == lim
    scale = np.abs(res[0]).max()
    assert np.abs(res[1] - res[0]).max() > 1e-6 * scale
    assert np.abs(res[2] - res[0]).max() <= 1e-14 * scale
