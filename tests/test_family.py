"""The family's description (fem_crossdiff.family): validation, expressions, kernels, growth."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.integrate import quad

from fem_crossdiff.errors import ParameterError
from fem_crossdiff.family import (
    KERNEL_KINDS,
    Expression,
    Family,
    Growth,
    Interaction,
    Kernel,
    Potential,
    morse,
)


def test_importable_without_dolfinx():
    code = ("import sys; import fem_crossdiff.family, fem_crossdiff.particles.family; "
            "assert 'dolfinx' not in sys.modules, 'dolfinx imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_expression_values_and_complex_step_gradient():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (50, 3))
    phi = Potential("(x**2 + y**2 + z**2) / 2 + exp(-x) * sin(3*y) + abs(z) + max(x, y)**2")
    env_val = (0.5 * np.sum(x * x, axis=1) + np.exp(-x[:, 0]) * np.sin(3 * x[:, 1])
               + np.abs(x[:, 2]) + np.maximum(x[:, 0], x[:, 1]) ** 2)
    np.testing.assert_allclose(phi(x), env_val, rtol=1e-13)
    mx = np.maximum(x[:, 0], x[:, 1])
    grad = np.stack([x[:, 0] - np.exp(-x[:, 0]) * np.sin(3 * x[:, 1])
                     + 2 * mx * (x[:, 0] >= x[:, 1]),
                     x[:, 1] + 3 * np.exp(-x[:, 0]) * np.cos(3 * x[:, 1])
                     + 2 * mx * (x[:, 1] > x[:, 0]),
                     x[:, 2] + np.sign(x[:, 2])], axis=1)
    np.testing.assert_allclose(phi.grad(x), grad, rtol=1e-12, atol=1e-13)
    # fewer coordinates than variables: the missing ones are 0
    np.testing.assert_allclose(Potential("x**2 + z")(x[:, :1]), x[:, 0] ** 2, rtol=1e-14)
    assert Expression("2 * (1 - P / 3)", ("P",))(P=np.array([0.0, 3.0])).tolist() == [2.0, 0.0]


def test_potential_from_callables():
    phi = Potential(value=lambda x: np.sum(x**2, axis=1), gradient=lambda x: 2 * x)
    x = np.array([[1.0, 2.0]])
    np.testing.assert_allclose(phi.grad(x), [[2.0, 4.0]])
    np.testing.assert_allclose(phi(x), [5.0])


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "x.real", "open('f')", "lambda: 1", "[x]", "x if y else z",
    "w + 1", "exp(x, y)", "", "1 +", "'a'", "x == y", "exp(x=1)", "True",
])
def test_unsafe_or_bad_expressions_rejected(text):
    with pytest.raises(ParameterError) as err:
        Potential(text, key="potentials[0]")
    assert err.value.key == "potentials[0].expr"
    assert err.value.value == text


@pytest.mark.parametrize("kind", KERNEL_KINDS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_kernels_unit_mass_and_gradient(kind, d):
    ker = Kernel(kind, 0.3)
    area = 2 * math.pi ** (d / 2) / math.gamma(d / 2)
    upper = ker.support if math.isfinite(ker.support) else 30 * ker.length
    e = np.eye(d)[0]
    mass = area * quad(lambda r: r ** (d - 1) * float(ker.value((r * e)[None])[0]), 0, upper,
                       epsabs=0, epsrel=1e-11, limit=200)[0]
    assert abs(mass - 1.0) < 1e-8
    rng = np.random.default_rng(d)
    z = rng.uniform(-0.25, 0.25, (20, d))
    z = z[np.linalg.norm(z, axis=1) > 0.02]
    h = 1e-6
    fd = np.stack([(ker.value(z + h * np.eye(d)[i]) - ker.value(z - h * np.eye(d)[i])) / (2 * h)
                   for i in range(d)], axis=1)
    np.testing.assert_allclose(ker.gradient(z), fd, rtol=1e-6, atol=1e-6 * np.abs(fd).max())
    np.testing.assert_array_equal(ker.gradient(np.zeros((1, d))), 0.0)


def test_morse_terms_sum_to_the_morse_potential_in_1d():
    rep, att = morse(2.0, 0.2, 1.0, 1.0)
    r = np.linspace(0.05, 3, 40)[:, None]
    total = rep.strength[0][0] * rep.kernel.value(r) + att.strength[0][0] * att.kernel.value(r)
    np.testing.assert_allclose(total, 2.0 * np.exp(-r[:, 0] / 0.2) - np.exp(-r[:, 0]),
                               rtol=1e-13)


def test_growth_laws():
    g = Growth(rate=2.0, p_max=4.0)
    np.testing.assert_allclose(g(np.array([0.0, 2.0, 4.0])), [2.0, 1.0, 0.0])
    e = Growth("expr", expr="-0.5 + tanh(1 - P)")
    np.testing.assert_allclose(e(np.array([1.0])), [-0.5])
    assert Growth().is_zero and not g.is_zero


@pytest.mark.parametrize("build, key, value", [
    (lambda: Family((0.1, -1.0)), "sigma[1]", -1.0),
    (lambda: Family((0.1, float("nan"))), "sigma[1]", None),
    (lambda: Family(()), "sigma", ()),
    (lambda: Family((0.1,), potentials=(None, None)), "potentials", (None, None)),
    (lambda: Family((0.1,), potentials=("x**2",)), "potentials[0]", "x**2"),
    (lambda: Family((0.1, 0.2), interactions=(
        Interaction(Kernel("gaussian", 1.0), ((1.0,),)),)), "interactions[0].strength", None),
    (lambda: Interaction(Kernel("gaussian", 1.0), ((1.0, 2.0), (1.0,))),
     "interaction.strength", None),
    (lambda: Interaction(Kernel("gaussian", 1.0), ((1.0, 2.0), (1.0, "a"))),
     "interaction.strength[1][1]", "a"),
    (lambda: Kernel("cauchy", 1.0), "kernel.kind", "cauchy"),
    (lambda: Kernel("gaussian", 0.0), "kernel.length", 0.0),
    (lambda: Growth(rate=float("inf")), "growth.rate", None),
    (lambda: Growth(p_max=-1.0), "growth.p_max", -1.0),
    (lambda: Growth("power"), "growth.kind", "power"),
    (lambda: Growth("expr", expr="x + 1"), "growth.expr", "x + 1"),
    (lambda: Potential(), "potential", None),
    (lambda: Potential("x", value=lambda x: x, gradient=lambda x: x), "potential", "x"),
])
def test_validation_names_key_value_allowed(build, key, value):
    with pytest.raises(ParameterError) as err:
        build()
    assert err.value.key == key
    if value is not None:
        assert err.value.value == value
    assert err.value.allowed


def test_family_accessors():
    fam = Family((0.1, 0.2), potentials=(Potential("x"), None),
                 interactions=(Interaction(Kernel("bump", 0.5), ((1.0, -1.0), (-1.0, 0.0))),),
                 growth=(Growth(rate=0.0), Growth(rate=1.0)))
    assert fam.n_species == 2 and fam.has_growth
    assert fam.growth_law(0) is None and fam.growth_law(1) is not None
    assert fam.potential(1) is None and fam.interactions[0].symmetric
    assert Family.paper(3, 0.5) == Family((0.5, 0.5, 0.5))
    assert not Family.paper(2, 0.0).has_growth
