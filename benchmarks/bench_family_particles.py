"""Benchmark: the cost of a particle step of the family against the paper's system.

Two species of ``N`` particles each in free space (2D), Gaussian initial data, ``eps = 0.1``,
the grid drift of (1.6) (:class:`~fem_crossdiff.particles.drift.GridDrift`), ``dt = 1e-3``.
Microseconds per particle-step (one step divided by ``2 N``, minimum over the repeats) of

* ``paper``: :func:`fem_crossdiff.particles.state.step` (pressure and noise);
* ``family_paper``: :func:`fem_crossdiff.particles.family.family_step` with the paper's
  ingredients only (``Family.paper``): the overhead of the family step;
* ``potential_sigma``: plus per-species ``sigma_k`` and a potential expression per species;
* ``growth_exact`` / ``growth_grid``: plus logistic growth of both species (``S`` at the
  particles by the particle sum over neighbours or by the grid; the weight update, the
  effective sample size; resampling when it falls below ``N / 2``);
* ``interaction_bump`` / ``interaction_gauss``: plus (with ``growth_grid``) a 2 x 2 interaction
  with a compact kernel (bump, radius 0.2: the pairs within it, about a fifth of all pairs
  here) or a Gaussian one (length 0.2: all pairs); ``O(N^2)``, only up to ``N = 4000``;
* ``interaction_bump_grid`` / ``interaction_gauss_grid``: the same interactions by the
  particle-mesh route (:class:`~fem_crossdiff.particles.family.GridInteraction`, 16 and 8
  cells per kernel length).

``--quick``: ``N = 1000, 4000``; the default adds ``N = 16000``. Minimum of 2 repeats of 3
steps. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from fem_crossdiff.family import Family, Growth, Interaction, Kernel, Potential
from fem_crossdiff.particles import FreeSpace, GridDrift, ParticleParams, init_state, step
from fem_crossdiff.particles.family import GridInteraction, family_state, family_step


def _cases():
    pots = (Potential("(x**2 + y**2) / 2"), Potential("0.5 * (x - 0.2)**2 + y**2"))
    grow = (Growth(rate=1.0, p_max=2.0), Growth("expr", expr="0.5 - 0.5 * P"))
    strength = ((-1.0, 0.5), (0.5, -1.0))
    base = dict(sigma=(0.01, 0.02), potentials=pots)
    cases = {
        "family_paper": Family.paper(2, 0.01),
        "potential_sigma": Family(**base),
        "growth_exact": Family(**base, growth=grow),
        "growth_grid": Family(**base, growth=grow),
        "interaction_bump": Family(**base, growth=grow, interactions=(
            Interaction(Kernel("bump", 0.2), strength),)),
        "interaction_gauss": Family(**base, growth=grow, interactions=(
            Interaction(Kernel("gaussian", 0.2), strength),)),
    }
    cases["interaction_bump_grid"] = cases["interaction_bump"]
    cases["interaction_gauss_grid"] = cases["interaction_gauss"]
    return cases


def _time(fn, state, steps, repeats):
    best = np.inf
    for _ in range(repeats):
        s = state
        t0 = time.perf_counter()
        for _ in range(steps):
            s = fn(s)
        best = min(best, time.perf_counter() - t0)
    return best / steps


def main() -> dict:
    """Run the benchmark and print a table and a JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    ns = (1000, 4000) if args.quick else (1000, 4000, 16000)
    steps, repeats, dt = 3, 2, 1e-3
    dom, drift = FreeSpace(2), GridDrift()
    out = {}
    for n in ns:
        params = ParticleParams(n, (1.0, 0.5), (1.0, 2.0), 0.01, 2.0, 0.1)
        st = init_state(params, lambda r, c: 0.3 * r.standard_normal((c, 2)), 1, dom)
        row = {"paper": _time(lambda s: step(s, dt, params, dom, drift), st, steps, repeats)}
        fs = family_state(st)
        for name, fam in _cases().items():
            if name in ("interaction_gauss", "interaction_bump") and n > 4000:
                continue  # the pair sums: O(N^2) work (and the bump's pairs' memory)
            dens = "exact" if name == "growth_exact" else "grid"
            inter = (GridInteraction(16.0 if "bump" in name else 8.0)
                     if name.endswith("_grid") and name.startswith("interaction") else None)
            row[name] = _time(lambda s, f=fam, m=dens, i=inter: family_step(
                s, dt, params, f, dom, drift, density=m, interaction=i), fs, steps, repeats)
        out[n] = {k: v / (2 * n) * 1e6 for k, v in row.items()}
        print(f"N = {n}: " + ", ".join(f"{k} {v:.2f}" for k, v in out[n].items())
              + " us per particle-step", flush=True)
    print(json.dumps({"us_per_particle_step": out}))
    return out


if __name__ == "__main__":
    main()
