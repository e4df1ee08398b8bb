"""The slope limiters of the ``"muscl"`` scheme and the clamp of the face fractions.

Functions of the ratio ``r`` of the upstream to the edge difference (written with products so
that ``dn = 0`` needs no division); each returns ``phi(r)`` in ``[0, 2]``, with ``phi(1) = 1``
(second order on smooth data) except ``"compressive"`` (``phi(1) = 2``). ``"sensor"`` also
depends on the size of the jump along the edge (:func:`sensor_weight`): van Leer's where it is
small, 1.93 at ``r = 1`` where it is large. ``"smooth"`` (:func:`smooth_limiter`,
:func:`smooth_clamped`) is a function of both differences and of the edge length, without
branches; ``"smooth-sensor"`` (:func:`smooth_sensor_limiter`) is the sensor's blend of it with
the front limiter regularised the same way, and takes a sharper minimum with the clamp
(:func:`compact_clamped`). The tuning numbers are fields of the limiter objects of
:mod:`fem_crossdiff.models.muscl.options` (their defaults where an argument is ``None``).
"""

from __future__ import annotations

import numpy as np

from fem_crossdiff.models.muscl.options import (
    LIMITER_CLASSES,
    Limiter,
    Sensor,
    Smooth,
    SmoothSensor,
    as_limiter,
)


def sensor_weight(jump: np.ndarray, derivative: bool = False,
                  band: tuple[float, float] | None = None):
    """The front weight ``w`` of the ``"sensor"`` limiter (and ``dw / d jump``).

    ``w = t^2 (3 - 2 t)``, ``t = (jump - z0) / (z1 - z0)`` clipped to ``[0, 1]``
    (``band = (z0, z1)``, :attr:`Sensor.band` by default): once continuously differentiable,
    so that the limited flux keeps a continuous derivative across the band's ends. On smooth
    data the jump is ``O(h)``, below ``z0`` on fine enough meshes, and the limiter is exactly
    van Leer's; at a contact discontinuity kept a few cells wide it is ``O(1)``.
    """
    z0, z1 = Sensor().band if band is None else band
    t = np.clip((jump - z0) / (z1 - z0), 0.0, 1.0)
    w = t * t * (3.0 - 2.0 * t)
    if not derivative:
        return w
    return w, 6.0 * t * (1.0 - t) / (z1 - z0)


def _sensor_parts(up: np.ndarray, dn: np.ndarray, slopes: bool, slope: float):
    """Van Leer's and the front limiter's ``phi`` (or ``phi'(r)``) for ``"sensor"``.

    The front limiter is ``2 tanh(K r / 2)`` for ``r > 0`` (0 below): slope ``K`` at 0 and
    smooth for ``r > 0``, so that Newton meets no second kink (``min(K r, 2)`` has one at
    ``r = 2 / K``).
    """
    free = dn == 0.0
    r = up / np.where(free, 1.0, dn)
    t = np.tanh(0.5 * slope * np.maximum(r, 0.0))
    if not slopes:
        return slope_limiter("vanleer", up, dn), np.where(free, 2.0, 2.0 * t)
    # at the kink r = 0 the derivative from the right (as slope_limiter_slope)
    front = np.where((r >= 0.0) & ~free, slope * (1.0 - t * t), 0.0)
    return slope_limiter_slope("vanleer", up, dn), front


def smooth_limiter(up: np.ndarray, dn: np.ndarray, eps2: np.ndarray,
                   derivative: bool = False):
    """Van Leer regularised at the scale ``eps`` (the ``"smooth"`` limiter), in product form.

    ``phi = (p + s) / (dn^2 + s)``, ``p = up dn``, ``s = sqrt(p^2 + eps^4)`` (van Leer's
    ``(p + |p|) / (dn^2 + |p|)`` with ``|p|`` replaced by ``s >= |p|``): infinitely
    differentiable in ``(up, dn)`` (the denominator is ``>= eps^2``), in ``[0, 2)`` (``p <=
    s``), exactly 1 at ``up = dn`` (``r = 1``), tending to 1 where ``|up|, |dn| << eps`` (the
    central face value, second order, no branch) and to van Leer's where ``|up dn| >>
    eps^2``. Why: van Leer's kink at ``r = 0`` and its jump at ``dn = 0`` (from 2 to 0 across
    ``dn = 0`` at fixed ``up``) flip on edges whose differences are of the size of a Newton
    correction, and make the residual only piecewise smooth there.

    Args:
        up: The difference across the upstream node (scaled: ``a_k D_k,up``).
        dn: The difference along the edge (``a_k (c_k,dn - c_k,up)``), same shape.
        eps2: ``eps^2``, broadcastable against ``dn``.
        derivative: Also return ``d phi / d up`` and ``d phi / d dn``.
    """
    pr = up * dn
    s = np.sqrt(pr * pr + eps2 * eps2)
    num, den = pr + s, dn * dn + s
    phi = num / den
    if not derivative:
        return phi
    t = pr / s
    inv2 = 1.0 / (den * den)
    d_up = dn * ((1.0 + t) * den - num * t) * inv2
    d_dn = (up * (1.0 + t) * den - num * (2.0 * dn + up * t)) * inv2
    return phi, d_up, d_dn


def smooth_clamped(x: np.ndarray, dn: np.ndarray, c: np.ndarray, delta: np.ndarray,
                   derivative: bool = False, p: int | None = None):
    """``g = (x^-p + clamp^-p)^(-1/p)``, ``clamp = 2 A / |dn|``, ``A = sqrt(c^2 + d^2) - d``.

    The ``"smooth"`` limiter's clamp: a smooth minimum of the limiter ``x >= 0`` and the
    clamp, ``<=`` both, so ``|c_f - c_up| = g |dn| / 2 <= A <= |c|`` (positivity, as the
    clamp ``min(x, 2 |c| / |dn|)`` of the other limiters); ``A`` is ``|c|`` with its kink at
    ``c = 0`` rounded at the scale ``d = delta`` (a species exactly 0 at the upstream node: there
    ``g`` is 0 with a zero derivative, not a one-sided kink). Written ``g = 2 x A / ((x
    dn)^p + (2 A)^p)^(1/p)`` (``p`` even, :attr:`Smooth.p` by default), smooth in ``dn`` across 0
    (there ``g = x``; also where ``A = dn = 0``: a species absent at both ends does not
    constrain).

    Args:
        x: The limiter's value ``phi_lim >= 0``.
        dn: ``a_k (c_k,dn - c_k,up)``.
        c: ``a_k c_k,up``.
        delta: The rounding scale (``eps``), broadcastable.
        derivative: Also return ``dg / dx``, ``dg / d dn`` (at fixed ``x``) and ``dg / dc``.
        p: The power (even; :attr:`Smooth.p` if None).

    Returns:
        ``(g, clamp)``, or ``(g, clamp, dg_dx, dg_ddn, dg_dc)``.
    """
    root = np.sqrt(c * c + delta * delta)
    A = c * c / (root + delta)  # sqrt(c^2 + delta^2) - delta without cancellation
    P = Smooth().p if p is None else p
    D = ((x * dn) ** P + (2.0 * A) ** P) ** (1.0 / P)
    free = D == 0.0
    inv = 1.0 / np.where(free, 1.0, D)
    g = np.where(free, x, 2.0 * x * A * inv)
    big = dn != 0.0
    clamp = np.where(big, 2.0 * A / np.where(big, np.abs(dn), 1.0), np.inf)
    if not derivative:
        return g, clamp
    q = 2.0 * A * inv  # 2 A / D in [0, 1]
    xi = x * inv
    dg_dx = np.where(free, 1.0, q ** (P + 1))
    dg_ddn = np.where(free, 0.0, -q * x * xi * (xi * dn) ** (P - 1))
    dg_dA = 2.0 * xi * (xi * dn) ** P
    dA_dc = c / np.where(root > 0.0, root, 1.0)
    dg_dc = np.where(free, 0.0, dg_dA * dA_dc)
    return g, clamp, dg_dx, dg_ddn, dg_dc


def compact_clamped(x: np.ndarray, dn: np.ndarray, c: np.ndarray, delta: np.ndarray,
                    derivative: bool = False, width: tuple[float, float] | None = None,
                    band: tuple[float, float] | None = None):
    """``"smooth-sensor"``'s clamp: ``g = 2 x A / M``, ``M`` a smooth max of ``x |dn|, 2 A``.

    The same clamp as :func:`smooth_clamped` (``A = sqrt(c^2 + d^2) - d``, ``d = delta``,
    ``clamp = 2 A / |dn|``, ``g <= min(x, clamp)``, so ``|c_f - c_up| <= |c|``), with a
    smooth minimum that equals ``min(x, clamp)`` outside a band around ``x = clamp``: with
    ``a = x |dn|``, ``b = 2 A`` scaled by ``max(a, b)``, ``y = a - b``, ``k = omega (a +
    b)``, ``M = max(a, b) + k s^2 / 4``, ``s = (1 - |y| / k)^+`` (a quadratic blend: once
    differentiable with a Lipschitz derivative, enough for Newton's quadratic convergence).
    ``M >= max(a, b)`` and is homogeneous of degree 1. A p-mean ``(x^-p + clamp^-p)^(-1/p)``
    falls short of the minimum by ``(min / max)^p / p`` even far from the crossing (10% at
    ``p = 2``, ``clamp = 2 x``) and smears a contact's tail; this one by at most ``omega / 4``
    and only where ``x`` and the clamp are within the factor ``(1 + omega) / (1 - omega)``.
    The relative width ``omega`` goes from ``width``'s first value to its second as ``|dn|``
    crosses ``band`` (:attr:`SmoothSensor.width` and :attr:`SmoothSensor.band` by default;
    :func:`sensor_weight`'s
    blend): a wide turn (low curvature, few Newton iterations) on smooth data, a sharp one at
    fronts. Where ``max(a, b) < 1e-150`` (the correction ``g dn / 2`` is below round-off of
    any fraction) ``g = min(x, clamp)`` without the blend, whose ratios would overflow.

    Args:
        x: The limiter's value ``phi_lim >= 0``.
        dn: ``a_k (c_k,dn - c_k,up)``.
        c: ``a_k c_k,up``.
        delta: The rounding scale of ``|c|`` (``eps``), broadcastable.
        derivative: Also return ``dg / dx``, ``dg / d dn`` (at fixed ``x``; the width's
            dependence on ``|dn|`` included) and ``dg / dc``.
        width: The relative widths on smooth data and at fronts (``None``:
            :attr:`SmoothSensor.width`).
        band: The jumps over which the width goes from one to the other (``None``:
            :attr:`SmoothSensor.band`).

    Returns:
        ``(g, clamp)``, or ``(g, clamp, dg_dx, dg_ddn, dg_dc)``.
    """
    root = np.sqrt(c * c + delta * delta)
    A = c * c / (root + delta)  # sqrt(c^2 + delta^2) - delta without cancellation
    if width is None or band is None:
        default = SmoothSensor()
        width = default.width if width is None else width
        band = default.band if band is None else band
    w_smooth, w_front = width
    wgt, dwgt = sensor_weight(np.abs(dn), derivative=True, band=band)
    omega = w_smooth + (w_front - w_smooth) * wgt
    a, b = x * np.abs(dn), 2.0 * A
    mx = np.maximum(a, b)
    big = dn != 0.0
    clamp = np.where(big, 2.0 * A / np.where(big, np.abs(dn), 1.0), np.inf)
    tiny = mx < 1e-150
    scale = np.where(tiny, 1.0, mx)
    a1, b1 = np.where(tiny, 0.0, a / scale), np.where(tiny, 0.0, b / scale)  # the max is 1
    y = a1 - b1
    k = omega * (a1 + b1)  # >= omega where not tiny
    band = np.abs(y) < k
    s = np.where(band, 1.0 - np.abs(y) / np.where(band, k, 1.0), 0.0)
    q, dq = 0.25 * s * s, 0.5 * s
    M = np.where(tiny, 1.0, 0.5 * (a1 + b1 + np.abs(y)) + k * q)  # >= 1 where not tiny
    g = np.where(tiny, np.minimum(x, clamp), x * b1 / M)
    if not derivative:
        return g, clamp
    sg = np.sign(y)
    # dM/da1, dM/db1 (k ds/da1 = -sg + omega (1 - s), k ds/db1 = sg + omega (1 - s): no
    # division by k), dM/domega
    Ma = 0.5 * (1.0 + sg) + omega * q + dq * (-sg + omega * (1.0 - s))
    Mb = 0.5 * (1.0 - sg) + omega * q + dq * (sg + omega * (1.0 - s))
    Mw = (a1 + b1) * (q + dq * (1.0 - s))
    inv_M2 = 1.0 / (M * M)
    dg_dx = np.where(tiny, np.where(x <= clamp, 1.0, 0.0), b1 / M - a1 * b1 * Ma * inv_M2)
    # x / max(a, b) = a1 / |dn| where dn != 0 (where dn = 0, a1 = 0: Ma = 0, M = b1 = 1),
    # below 2e150 as max(a, b) >= 1e-150
    x_mx = np.where(big & ~tiny, a1 / np.where(big, np.abs(dn), 1.0), 0.0)
    sd = np.sign(dn)
    dg_ddn = -x * b1 * inv_M2 * (x_mx * Ma + np.where(tiny, 0.0, Mw) * (w_front - w_smooth)
                                 * dwgt) * sd
    dA_dc = c / np.where(root > 0.0, root, 1.0)
    dg_dc = 2.0 * x_mx * (M - b1 * Mb) * inv_M2 * dA_dc
    return g, clamp, dg_dx, dg_ddn, dg_dc


def smooth_front_limiter(up: np.ndarray, dn: np.ndarray, eps2: np.ndarray,
                         derivative: bool = False, slope: float | None = None):
    """The sensor's front limiter ``2 tanh(K r / 2)^+`` regularised at the scale ``eps``.

    ``phi = 2 tanh(K q / 2)``, ``q = (p + s) / (2 (dn^2 + eps^2))``, ``p = up dn``, ``s =
    sqrt(p^2 + eps^4)`` (:func:`smooth_limiter`'s ``s``; ``K = slope``):
    ``q`` is ``r^+ = (p + |p|) / (2 dn^2)`` with ``|p|`` replaced by ``s``, so the kink of
    ``r^+`` at ``r = 0`` is rounded at ``|up dn| ~ eps^2`` and ``dn = 0`` needs no division
    (there ``q = 1/2``). In ``[0, 2)``, analytic in ``(up, dn)``.

    Args:
        up: ``a_k D_k,up``.
        dn: ``a_k (c_k,dn - c_k,up)``, same shape.
        eps2: ``eps^2``, broadcastable against ``dn``.
        derivative: Also return ``d phi / d up`` and ``d phi / d dn``.
        slope: The front limiter's ``K`` (``None``: :attr:`Sensor.slope`).
    """
    pr = up * dn
    s = np.sqrt(pr * pr + eps2 * eps2)
    den = 2.0 * (dn * dn + eps2)
    num = pr + s
    K = Sensor().slope if slope is None else slope
    th = np.tanh(0.5 * K * num / den)
    if not derivative:
        return 2.0 * th
    t = pr / s
    f = K * (1.0 - th * th) / (den * den)  # d phi / d q over den^2
    return 2.0 * th, f * dn * (1.0 + t) * den, f * (up * (1.0 + t) * den - 4.0 * num * dn)


def smooth_sensor_limiter(up: np.ndarray, dn: np.ndarray, eps2: np.ndarray,
                          derivative: bool = False, band: tuple[float, float] | None = None,
                          slope: float | None = None):
    """The ``"smooth-sensor"`` limiter: ``(1 - w) phi_smooth + w phi_front``.

    ``phi_smooth`` = :func:`smooth_limiter`, ``phi_front`` = :func:`smooth_front_limiter`,
    ``w = sensor_weight(|dn|)`` (the ``"sensor"``'s blend, ``|dn| = a_k |c_k,dn - c_k,up|``
    the scaled jump, ``band`` the sensor's band): on smooth data (jumps ``O(h)`` below
    ``band[0]``) exactly the
    ``"smooth"`` limiter, at a contact a few cells wide the compressive front limiter, and
    without the kinks of ``"sensor"`` (``w`` is C1 and flat near ``dn = 0``, both limiters
    analytic). In ``[0, 2)``.

    Args:
        up: ``a_k D_k,up``.
        dn: ``a_k (c_k,dn - c_k,up)``, same shape.
        eps2: ``eps^2``, broadcastable against ``dn``.
        derivative: Also return ``d phi / d up`` and ``d phi / d dn`` (the weight's
            ``dw / d jump sign(dn) (phi_front - phi_smooth)`` included).
        band: The sensor's band (``None``: :attr:`SmoothSensor.sensor_band`).
        slope: The front limiter's ``K`` (``None``: :attr:`SmoothSensor.slope`).
    """
    jump = np.abs(dn)
    if not derivative:
        sm = smooth_limiter(up, dn, eps2)
        fr = smooth_front_limiter(up, dn, eps2, slope=slope)
        return sm + sensor_weight(jump, band=band) * (fr - sm)
    w, dw = sensor_weight(jump, derivative=True, band=band)
    sm, sm_u, sm_v = smooth_limiter(up, dn, eps2, derivative=True)
    fr, fr_u, fr_v = smooth_front_limiter(up, dn, eps2, derivative=True, slope=slope)
    return (sm + w * (fr - sm), sm_u + w * (fr_u - sm_u),
            sm_v + w * (fr_v - sm_v) + dw * np.sign(dn) * (fr - sm))


def slope_limiter(limiter: str | Limiter, up: np.ndarray, dn: np.ndarray,
                  jump: np.ndarray | None = None) -> np.ndarray:
    """``phi(up / dn)`` of the limiter ``name``, 2 (no constraint) where ``dn = 0``.

    Written with products instead of the ratio so that ``dn = 0`` needs no division: a
    species that is constant along the edge does not constrain the common limiter.
    ``"sensor"`` needs the scaled jump ``jump = a_k |dn|`` (same shape as ``dn``): it is
    ``(1 - w) phi_vanleer + w 2 tanh(K r / 2)^+`` with ``w = sensor_weight(jump)`` and
    ``K =`` :attr:`Sensor.slope`, in ``[0, 2]`` and 0 for ``r <= 0``. ``limiter`` is a
    :class:`~fem_crossdiff.models.muscl.options.Limiter` or a name (its defaults).
    """
    lim = as_limiter(limiter)
    name = lim.name
    if name == "sensor":
        if jump is None:
            raise ValueError("the 'sensor' limiter needs the scaled jump a_k |dn|")
        smooth, front = _sensor_parts(up, dn, slopes=False, slope=lim.slope)
        w = sensor_weight(jump, band=lim.band)
        return smooth + w * (front - smooth)
    if lim.smooth:
        raise ValueError(f"the {name!r} limiter needs its scale eps: use smooth_limiter or "
                         "smooth_sensor_limiter")
    pr = up * dn
    dn2 = dn * dn
    free = dn2 == 0.0
    safe = np.where(free, 1.0, dn2)
    if name == "vanleer":  # (r + |r|) / (1 + |r|)
        phi = (pr + np.abs(pr)) / np.where(free, 1.0, dn2 + np.abs(pr))
    elif name == "minmod":  # max(0, min(1, r))
        phi = np.clip(pr / safe, 0.0, 1.0)
    elif name == "vanalbada":  # (r^2 + r) / (r^2 + 1) for r > 0
        phi = np.where(pr > 0.0, (up * up + pr) / np.where(free, 1.0, up * up + dn2), 0.0)
    elif name == "superbee":  # max(0, min(2r, 1), min(r, 2))
        r = pr / safe
        phi = np.maximum(0.0, np.maximum(np.minimum(2 * r, 1.0), np.minimum(r, 2.0)))
    elif name == "compressive":  # min(2r, 2)^+: the upper edge of the TVD region
        phi = np.clip(2.0 * pr / safe, 0.0, 2.0)
    else:
        raise ValueError(f"limiter must be one of {tuple(LIMITER_CLASSES)}, got {name!r}")
    return np.where(free, 2.0, phi)


def slope_limiter_slope(limiter: str | Limiter, up: np.ndarray, dn: np.ndarray,
                        jump: np.ndarray | None = None) -> np.ndarray:
    """``phi_lim'(r)`` at ``r = up / dn`` (0 where ``dn = 0``: there ``phi = 2`` is constant).

    At the kinks (``r = 0`` for all, ``r = 1`` for minmod/compressive, ``r = 1/2, 1, 2`` for
    superbee) this is the one-sided derivative from the right (``r > kink``), except at
    ``r = 0`` where the right derivative is taken too: a derivative of 0 there would make the
    Newton linearisation blind to a slope that starts to open. For ``"sensor"`` it is the
    derivative at a fixed jump (the one with respect to the jump:
    :func:`slope_limiter_jump_slope`).
    """
    lim = as_limiter(limiter)
    name = lim.name
    if name == "sensor":
        smooth, front = _sensor_parts(up, dn, slopes=True, slope=lim.slope)
        w = sensor_weight(jump, band=lim.band)
        return smooth + w * (front - smooth)
    if lim.smooth:
        raise ValueError(f"the {name!r} limiter needs its scale eps: use smooth_limiter or "
                         "smooth_sensor_limiter")
    free = dn == 0.0
    r = up / np.where(free, 1.0, dn)
    pos = r >= 0.0
    if name == "vanleer":
        x = 1.0 / (1.0 + np.abs(r))  # no overflow of (1 + |r|)^2 at huge r
        d = np.where(pos, 2.0 * x * x, 0.0)
    elif name == "minmod":
        d = np.where(pos & (r < 1.0), 1.0, 0.0)
    elif name == "vanalbada":
        d = np.where(pos, (1.0 + 2.0 * r - r * r) / (r * r + 1.0) ** 2, 0.0)
    elif name == "superbee":
        d = np.where(pos & (r < 0.5), 2.0, np.where((r >= 1.0) & (r < 2.0), 1.0, 0.0))
    elif name == "compressive":
        d = np.where(pos & (r < 1.0), 2.0, 0.0)
    else:
        raise ValueError(f"limiter must be one of {tuple(LIMITER_CLASSES)}, got {name!r}")
    return np.where(free, 0.0, d)


def slope_limiter_jump_slope(limiter: str | Limiter, up: np.ndarray, dn: np.ndarray,
                             jump: np.ndarray) -> np.ndarray:
    """``d phi / d jump`` at a fixed ratio ``r = up / dn`` (0 for every limiter but ``"sensor"``).

    For ``"sensor"``: ``(phi_front(r) - phi_smooth(r)) dw / d jump``; 0 where ``dn = 0`` (both
    limiters are 2 there).
    """
    lim = as_limiter(limiter)
    if lim.name != "sensor":
        return np.zeros(np.shape(dn))
    smooth, front = _sensor_parts(up, dn, slopes=False, slope=lim.slope)
    _, dw = sensor_weight(jump, derivative=True, band=lim.band)
    return dw * (front - smooth)
