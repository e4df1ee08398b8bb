"""Model parameters of the interacting particle system (1.6).

For species ``k = 1..n`` and particles ``i = 1..N`` (the same ``N`` for every species, as in the
paper),

    dX_k^i = -b_k [grad V^eps * (sum_l a_l M_l/N sum_j V^eps(. - X_l^j))^(m-1)](X_k^i) dt
             + sqrt(2 sigma) dB_k^i.

(1.6) is written for probability densities (``M_l = 1``); a species of mass ``M_l = int rho_l``
is represented by ``N`` particles of weight ``M_l / N`` each, so that its empirical measure
approximates ``rho_l`` itself and the pressure, which is nonlinear in the densities, sees the
right total density ``sum_l a_l rho_l``. The masses are :attr:`ParticleParams.masses`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fem_crossdiff.laws import PowerLaw
from fem_crossdiff.mollifiers import KERNELS, Mollifier, get_mollifier

__all__ = ["ParticleParams"]


def _positive_tuple(name: str, values) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except TypeError:
        raise ValueError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if len(out) == 0:
        raise ValueError(f"{name} must have at least one entry (one per species), got {values!r}")
    for k, v in enumerate(out):
        if not (math.isfinite(v) and v > 0.0):
            raise ValueError(f"{name}[{k}] must be a finite number > 0, got {v!r}")
    return out


@dataclass(frozen=True)
class ParticleParams:
    """Parameters of (1.6): ``n`` species of ``N`` particles each.

    Attributes:
        n_particles: particles per species ``N >= 1``.
        a: weights ``a_l > 0`` of the species in the total density, one per species.
        b: mobilities ``b_k > 0``, one per species (same length as ``a``).
        sigma: diffusion coefficient ``sigma >= 0`` (noise ``sqrt(2 sigma) dB``).
        m: pressure exponent, real ``m >= 2`` (``P = S^(m-1)``).
        eps: mollifier radius ``eps > 0``: ``V^eps`` is supported in the ball of radius ``eps``.
        kernel: mollifier name, one of :data:`fem_crossdiff.mollifiers.KERNELS`.
        masses: masses ``M_l = int rho_l > 0`` of the species, one per species (``None``: 1 for
            every species, probability densities as in the paper); particle ``j`` of species
            ``l`` carries the weight ``a_l M_l / N`` in the total density. For FE initial data,
            :attr:`fem_crossdiff.particles.mesh_domain.FEDensitySampler.mass` gives them.
    """

    n_particles: int
    a: tuple[float, ...]
    b: tuple[float, ...]
    sigma: float
    m: float
    eps: float
    kernel: str = "bump"
    masses: tuple[float, ...] | None = None

    def __post_init__(self):
        n = self.n_particles
        if isinstance(n, bool) or not isinstance(n, int | float) or int(n) != n or n < 1:
            raise ValueError(f"n_particles (N) must be an integer >= 1, got {n!r}")
        object.__setattr__(self, "n_particles", int(n))
        a = _positive_tuple("a", self.a)
        b = _positive_tuple("b", self.b)
        if len(a) != len(b):
            raise ValueError(
                f"a and b must have one entry per species (equal lengths), got len(a)={len(a)}, "
                f"len(b)={len(b)}"
            )
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)
        sigma = float(self.sigma)
        if not (math.isfinite(sigma) and sigma >= 0.0):
            raise ValueError(f"sigma must be a finite number >= 0, got {self.sigma!r}")
        object.__setattr__(self, "sigma", sigma)
        m = float(self.m)
        if not (math.isfinite(m) and m >= 2.0):
            raise ValueError(f"m must be a finite real number >= 2, got {self.m!r}")
        object.__setattr__(self, "m", m)
        eps = float(self.eps)
        if not (math.isfinite(eps) and eps > 0.0):
            raise ValueError(f"eps must be a finite number > 0, got {self.eps!r}")
        object.__setattr__(self, "eps", eps)
        if isinstance(self.kernel, Mollifier):
            object.__setattr__(self, "kernel", self.kernel.name)
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if self.masses is not None:
            masses = _positive_tuple("masses", self.masses)
            if len(masses) != len(a):
                raise ValueError(
                    f"masses must have one entry per species ({len(a)}), got {len(masses)}"
                )
            object.__setattr__(self, "masses", masses)

    @property
    def n_species(self) -> int:
        """Number of species ``n``."""
        return len(self.a)

    @property
    def mass(self) -> tuple[float, ...]:
        """Species masses ``(M_1, ..., M_n)``: :attr:`masses`, or all ones when ``None``."""
        return self.masses if self.masses is not None else (1.0,) * len(self.a)

    @property
    def weights(self) -> tuple[float, ...]:
        """Particle weights ``a_l M_l / N`` in the total density, one per species."""
        n = self.n_particles
        return tuple(a * m / n for a, m in zip(self.a, self.mass, strict=True))

    @property
    def law(self) -> PowerLaw:
        """The pressure law ``P = S^(m-1)`` (:class:`fem_crossdiff.laws.PowerLaw`)."""
        return PowerLaw(self.m)

    @property
    def mollifier(self) -> Mollifier:
        """The kernel object of :mod:`fem_crossdiff.mollifiers`."""
        return get_mollifier(self.kernel)
