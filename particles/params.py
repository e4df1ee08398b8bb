"""Model parameters of the interacting particle system (1.6).

For species ``k = 1..n`` and particles ``i = 1..N`` (the same ``N`` for every species, as in the
paper),

    dX_k^i = -b_k [grad V^eps * (sum_l a_l/N sum_j V^eps(. - X_l^j))^(m-1)](X_k^i) dt
             + sqrt(2 sigma) dB_k^i.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    """

    n_particles: int
    a: tuple[float, ...]
    b: tuple[float, ...]
    sigma: float
    m: float
    eps: float
    kernel: str = "bump"

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

    @property
    def n_species(self) -> int:
        """Number of species ``n``."""
        return len(self.a)

    @property
    def mollifier(self) -> Mollifier:
        """The kernel object of :mod:`fem_crossdiff.mollifiers`."""
        return get_mollifier(self.kernel)
