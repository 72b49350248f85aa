"""A compiled log-density + gradient of the marginal growth model, for nutpie.

Why this exists: the PyMC model of ``models.growth.build_marginal_model`` is the model's
definition, and nutpie can compile it (``backend="numba"``). But that compile turns the
210-node logp+gradient graph into nested numba functions and then a ``cfunc`` that numba
cannot cache (it closes over the data), so *every* fit pays 20-30 s of compilation on a
2-core machine (about 65 s with a cold pytensor cache), and each gradient evaluation
allocates an array per graph node (~120 us). This module writes the same log density and
its reverse-mode gradient by hand as one loop over the model's cells, compiled by numba
with ``cache=True``: compiled once per machine (a few seconds), loaded in well under a
second afterwards, and ~30x cheaper per gradient.

It must equal PyMC's model exactly: ``tests/models/test_growth_kernel.py`` checks the log
density, the gradient, the initial point and the expanded draws against
``build_marginal_model`` compiled by PyTensor, at random points, for pooled factors
sampled centred and non-centred.

Unconstrained parameter vector (PyMC's free-variable order and transforms)::

    0 intercept                 1 slope
    2 arm_intercept             3 slope_effect
    4 log sd_intercept          5 log sd_slope
    6 logit corr_beta           7 log sd_residual
    then per pooled factor g with L levels:
      log sd_slope_effect_g, then L-1 values of the zero-sum transform of
      dev_slope_effect_g (centred) or z_slope_effect_g (non-centred)

The data travel to the compiled functions as one float64 array (nutpie's ``user_data``
pointer); ``_pack`` documents its layout.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from nutpie.sample import CompiledModel

from models.growth_spec import CELL_COLUMNS, GrowthData, GrowthModelSpec, GrowthPriors

__all__ = [
    "KernelGrowthModel",
    "build_kernel_model",
    "expand_point",
    "kernel_is_compiled",
    "logp_and_grad",
]

# ---------------------------------------------------------------- data layout

_N_PRIORS = 13
# header: size, n_dim, n_cells, n_groups, n_expanded, center, 13 prior constants
_HEADER = 6 + _N_PRIORS
_LOG_2PI = math.log(2.0 * math.pi)
_HALF_LOG_2_OVER_PI = 0.5 * math.log(2.0 / math.pi)


def _pack(
    data: GrowthData, priors: GrowthPriors, centered: tuple[bool, ...]
) -> tuple[np.ndarray, int, int]:
    """One float64 array with everything the kernel reads, and (n_dim, n_expanded).

    Layout: the header (total size, n_dim, n_cells, n_groups, n_expanded, center, the 13
    prior constants of ``GrowthPriors.constants``); per pooled factor its number of levels and
    whether it is centred (2 values each); per factor its level shares; the cell columns
    ``CELL_COLUMNS`` (n_cells values each); per factor the cells' level indices.
    """
    design = data.design
    cells = data.cells
    sizes = [int(s) for s in design.group_sizes]
    n_dim = 8 + sum(sizes)
    n_expanded = n_dim + 4 + sum(1 + s for s in sizes)
    parts: list[np.ndarray] = [
        np.zeros(6),
        np.asarray(list(priors.constants().values()), dtype=np.float64),
        np.asarray([v for s, c in zip(sizes, centered, strict=True) for v in (s, float(c))],
                   dtype=np.float64),
        *(np.asarray(design.level_shares[g], dtype=np.float64) for g in design.groups),
        *(cells[c].cast(float).to_numpy() for c in CELL_COLUMNS),
        *(cells[f"{g}_idx"].cast(float).to_numpy() for g in design.groups),
    ]
    packed = np.ascontiguousarray(np.concatenate(parts), dtype=np.float64)
    packed[:6] = (packed.size, n_dim, cells.height, len(sizes), n_expanded, design.center)
    return packed, n_dim, n_expanded


# ---------------------------------------------------------------- the kernel


@numba.njit(cache=True, error_model="numpy", nogil=True)
def _softplus(z: float) -> float:
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


@numba.njit(cache=True, error_model="numpy", nogil=True)
def _zero_sum_values(x: np.ndarray, at: int, n_lev: int, out: np.ndarray, to: int) -> None:
    """PyMC's ZeroSumTransform backward (a linear isometry: log-Jacobian 0).

    Maps the ``n_lev - 1`` values of ``x`` from ``at`` to ``n_lev`` values summing to zero,
    written to ``out`` from ``to``.
    """
    sqn = math.sqrt(n_lev)
    s = 0.0
    for j in range(n_lev - 1):
        s += x[at + j]
    norm = s / (sqn + n_lev)
    for j in range(n_lev - 1):
        out[to + j] = x[at + j] - norm
    out[to + n_lev - 1] = -s / sqn


@numba.njit(cache=True, error_model="numpy", nogil=True)
def logp_and_grad(x: np.ndarray, data: np.ndarray, grad: np.ndarray) -> float:
    """Log density (PyMC's, Jacobians included) at ``x``; writes its gradient to ``grad``.

    ``data`` is ``_pack``'s array. Forward pass over the cells, then the adjoints of the
    per-cell quantities (``*_b``) accumulated into the population parameters and chained
    through the transforms.
    """
    n_cells = int(data[2])
    n_groups = int(data[3])
    center = data[5]
    pr = data[6:_HEADER]
    for i in range(grad.size):
        grad[i] = 0.0

    b0, b1, arm_b, eff = x[0], x[1], x[2], x[3]
    sd0 = math.exp(x[4])
    sd1 = math.exp(x[5])
    cb = 1.0 / (1.0 + math.exp(-x[6]))
    sig = math.exp(x[7])
    rho = 2.0 * cb - 1.0
    d00, d11, d01, s2 = sd0 * sd0, sd1 * sd1, rho * sd0 * sd1, sig * sig

    # --- priors (with the log-Jacobians of PyMC's transforms)
    logp = 0.0
    for j in range(4):
        mu, sd = pr[2 * j], pr[2 * j + 1]
        z = (x[j] - mu) / sd
        logp += -0.5 * z * z - math.log(sd) - 0.5 * _LOG_2PI
        grad[j] += -z / sd
    for j, s in ((4, pr[9]), (5, pr[10]), (7, pr[12])):
        v = math.exp(x[j])
        logp += _HALF_LOG_2_OVER_PI - math.log(s) - 0.5 * (v / s) ** 2 + x[j]
        grad[j] += 1.0 - (v / s) ** 2
    eta = pr[11]
    lbeta = 2.0 * math.lgamma(eta) - math.lgamma(2.0 * eta)
    logp += -eta * _softplus(-x[6]) - eta * _softplus(x[6]) - lbeta
    grad[6] += eta * (1.0 - 2.0 * cb)

    # --- pooled factors: zero-sum level deviations, re-centred on the share-weighted mean
    meta = _HEADER
    share_at = meta + 2 * n_groups
    total_levels = 0
    for g in range(n_groups):
        total_levels += int(data[meta + 2 * g])
    cell_at = share_at + total_levels
    idx_at = cell_at + len(CELL_COLUMNS) * n_cells
    gd = np.zeros(total_levels)  # per level: deviation from the weighted average effect
    gd_b = np.zeros(total_levels)
    v_all = np.zeros(total_levels)
    pos, lvl = 8, 0
    sg = pr[8]
    for g in range(n_groups):
        n_lev = int(data[meta + 2 * g])
        centred = data[meta + 2 * g + 1] > 0.5
        tau = math.exp(x[pos])
        logp += _HALF_LOG_2_OVER_PI - math.log(sg) - 0.5 * (tau / sg) ** 2 + x[pos]
        grad[pos] += 1.0 - (tau / sg) ** 2
        _zero_sum_values(x, pos + 1, n_lev, v_all, lvl)
        sigma_z = tau if centred else 1.0
        ss = 0.0
        for j in range(n_lev):
            ss += v_all[lvl + j] ** 2
        logp += -0.5 * ss / sigma_z**2 - (n_lev - 1) * (0.5 * _LOG_2PI + math.log(sigma_z))
        mean_w = 0.0
        for j in range(n_lev):
            dev = v_all[lvl + j] if centred else tau * v_all[lvl + j]
            mean_w += data[share_at + lvl + j] * dev
        for j in range(n_lev):
            dev = v_all[lvl + j] if centred else tau * v_all[lvl + j]
            gd[lvl + j] = dev - mean_w
        pos += n_lev
        lvl += n_lev

    # --- likelihood, cell by cell (formula in models.growth's module docstring)
    s2_b = d00_b = d01_b = d11_b = 0.0
    b0_b = a_b = b1_b = e_b = 0.0
    log_s2 = math.log(s2)
    for c in range(n_cells):
        n = data[cell_at + c]
        k = data[cell_at + n_cells + c]
        g01 = data[cell_at + 2 * n_cells + c]
        g11 = data[cell_at + 3 * n_cells + c]
        arm = data[cell_at + 4 * n_cells + c]
        r0 = data[cell_at + 5 * n_cells + c]
        r1 = data[cell_at + 6 * n_cells + c]
        q00 = data[cell_at + 7 * n_cells + c]
        q01 = data[cell_at + 8 * n_cells + c]
        q11 = data[cell_at + 9 * n_cells + c]
        yy = data[cell_at + 10 * n_cells + c]
        effect = eff
        lvl = 0
        for g in range(n_groups):
            effect += gd[lvl + int(data[idx_at + g * n_cells + c])]
            lvl += int(data[meta + 2 * g])
        gam0 = b0 - center + arm * arm_b
        gam1 = b1 + arm * effect
        m00 = s2 + d00 * k + d01 * g01
        m01 = d00 * g01 + d01 * g11
        m10 = d01 * k + d11 * g01
        m11 = s2 + d01 * g01 + d11 * g11
        det = m00 * m11 - m01 * m10
        num00 = m11 * d00 - m01 * d01
        num01 = m11 * d01 - m01 * d11
        num10 = m00 * d01 - m10 * d00
        num11 = m00 * d11 - m10 * d01
        a00, a01, a10, a11 = num00 / det, num01 / det, num10 / det, num11 / det
        h0 = k * gam0 + g01 * gam1
        h1 = g01 * gam0 + g11 * gam1
        w00 = q00 - 2.0 * h0 * r0 + n * h0 * h0
        w11 = q11 - 2.0 * h1 * r1 + n * h1 * h1
        w01 = q01 - h0 * r1 - r0 * h1 + n * h0 * h1
        tr_s = yy - 2.0 * (gam0 * r0 + gam1 * r1) + n * (gam0 * h0 + gam1 * h1)
        tr_aw = a00 * w00 + (a01 + a10) * w01 + a11 * w11
        logdet = (k - 2.0) * log_s2 + math.log(det)
        logp += -0.5 * (n * (k * _LOG_2PI + logdet) + (tr_s - tr_aw) / s2)

        # adjoints, in reverse order of the forward pass
        logdet_b = -0.5 * n
        tr_s_b = -0.5 / s2
        tr_aw_b = 0.5 / s2
        s2_b += 0.5 * (tr_s - tr_aw) / (s2 * s2) + logdet_b * (k - 2.0) / s2
        det_b = logdet_b / det
        a00_b, a01_b, a11_b = tr_aw_b * w00, tr_aw_b * w01, tr_aw_b * w11
        a10_b = a01_b
        w00_b, w01_b, w11_b = tr_aw_b * a00, tr_aw_b * (a01 + a10), tr_aw_b * a11
        gam0_b = tr_s_b * (-2.0 * r0 + n * h0)
        gam1_b = tr_s_b * (-2.0 * r1 + n * h1)
        h0_b = tr_s_b * n * gam0 + w00_b * (2.0 * n * h0 - 2.0 * r0) + w01_b * (n * h1 - r1)
        h1_b = tr_s_b * n * gam1 + w11_b * (2.0 * n * h1 - 2.0 * r1) + w01_b * (n * h0 - r0)
        gam0_b += h0_b * k + h1_b * g01
        gam1_b += h0_b * g01 + h1_b * g11
        # a_ij = num_ij / det
        n00_b, n01_b, n10_b, n11_b = a00_b / det, a01_b / det, a10_b / det, a11_b / det
        det_b -= (a00_b * a00 + a01_b * a01 + a10_b * a10 + a11_b * a11) / det
        m00_b = n10_b * d01 + n11_b * d11 + det_b * m11
        m11_b = n00_b * d00 + n01_b * d01 + det_b * m00
        m01_b = -n00_b * d01 - n01_b * d11 - det_b * m10
        m10_b = -n10_b * d00 - n11_b * d01 - det_b * m01
        d00_b += n00_b * m11 - n10_b * m10 + m00_b * k + m01_b * g01
        d01_b += (-n00_b * m01 + n01_b * m11 + n10_b * m00 - n11_b * m10
                  + m00_b * g01 + m01_b * g11 + m10_b * k + m11_b * g01)
        d11_b += -n01_b * m01 + n11_b * m00 + m10_b * g01 + m11_b * g11
        s2_b += m00_b + m11_b
        b0_b += gam0_b
        a_b += gam0_b * arm
        b1_b += gam1_b
        e_b += gam1_b * arm
        lvl = 0
        for g in range(n_groups):
            gd_b[lvl + int(data[idx_at + g * n_cells + c])] += gam1_b * arm
            lvl += int(data[meta + 2 * g])

    grad[0] += b0_b
    grad[1] += b1_b
    grad[2] += a_b
    grad[3] += e_b
    grad[4] += (2.0 * sd0 * d00_b + rho * sd1 * d01_b) * sd0
    grad[5] += (2.0 * sd1 * d11_b + rho * sd0 * d01_b) * sd1
    grad[6] += sd0 * sd1 * d01_b * 2.0 * cb * (1.0 - cb)
    grad[7] += s2_b * 2.0 * s2

    # --- pooled factors, backwards: gd -> dev -> (v, tau) -> zero-sum values
    pos, lvl = 8, 0
    for g in range(n_groups):
        n_lev = int(data[meta + 2 * g])
        centred = data[meta + 2 * g + 1] > 0.5
        tau = math.exp(x[pos])
        sqn = math.sqrt(n_lev)
        gd_sum = 0.0
        for j in range(n_lev):
            gd_sum += gd_b[lvl + j]
        tau_b = 0.0
        ss = 0.0
        for j in range(n_lev):
            ss += v_all[lvl + j] ** 2
        if centred:
            # d/dtau of the ZeroSumNormal(sigma=tau) density
            tau_b += ss / tau**3 - (n_lev - 1) / tau
        head_b = 0.0
        for j in range(n_lev):
            dev_b = gd_b[lvl + j] - data[share_at + lvl + j] * gd_sum
            v = v_all[lvl + j]
            if centred:
                v_b = dev_b - v / (tau * tau)
            else:
                v_b = tau * dev_b - v
                tau_b += v * dev_b
            gd[lvl + j] = v_b  # reuse as scratch: the adjoint of the extended values
            if j < n_lev - 1:
                head_b += v_b
        last_b = gd[lvl + n_lev - 1]
        for j in range(n_lev - 1):
            grad[pos + 1 + j] += gd[lvl + j] - head_b / (sqn + n_lev) - last_b / sqn
        grad[pos] += tau_b * tau
        pos += n_lev
        lvl += n_lev
    return logp


@numba.njit(cache=True, error_model="numpy", nogil=True)
def expand_point(x: np.ndarray, data: np.ndarray, out: np.ndarray) -> None:
    """Write the expanded draw: ``x`` itself, then the constrained variables.

    Constrained part: sd_intercept, sd_slope, corr_beta, sd_residual, then per factor
    sd_slope_effect_g and the L zero-sum values (``dev_``/``z_slope_effect_g``).
    """
    n_dim = x.size
    n_groups = int(data[3])
    for i in range(n_dim):
        out[i] = x[i]
    out[n_dim] = math.exp(x[4])
    out[n_dim + 1] = math.exp(x[5])
    out[n_dim + 2] = 1.0 / (1.0 + math.exp(-x[6]))
    out[n_dim + 3] = math.exp(x[7])
    o = n_dim + 4
    pos = 8
    for g in range(n_groups):
        n_lev = int(data[_HEADER + 2 * g])
        out[o] = math.exp(x[pos])
        _zero_sum_values(x, pos + 1, n_lev, out, o + 1)
        o += 1 + n_lev
        pos += n_lev


_LOGP_SIG = numba.types.int64(
    numba.types.uint64,
    numba.types.CPointer(numba.types.double),
    numba.types.CPointer(numba.types.double),
    numba.types.CPointer(numba.types.double),
    numba.types.voidptr,
)
_EXPAND_SIG = numba.types.int64(
    numba.types.uint64,
    numba.types.uint64,
    numba.types.CPointer(numba.types.double),
    numba.types.CPointer(numba.types.double),
    numba.types.voidptr,
)


def _logp_c(dim, x_, out_, logp_, user_data_):  # noqa: ANN001, ANN202
    """The logp callback in nutpie's C signature; return codes as nutpie's (3/4: non-finite)."""
    size = int(numba.carray(user_data_, (1,), np.float64)[0])
    data = numba.carray(user_data_, (size,), np.float64)
    if dim != int(data[1]):
        return -1
    x = numba.carray(x_, (dim,))
    out = numba.carray(out_, (dim,))
    logp = numba.carray(logp_, (1,))
    value = logp_and_grad(x, data, out)
    logp[0] = value
    for i in range(dim):
        if not np.isfinite(out[i]):
            return 3
    if not np.isfinite(value):
        return 4
    return 0


def _expand_c(dim, expanded, x_, out_, user_data_):  # noqa: ANN001, ANN202
    size = int(numba.carray(user_data_, (1,), np.float64)[0])
    data = numba.carray(user_data_, (size,), np.float64)
    if dim != int(data[1]) or expanded != int(data[4]):
        return -1
    expand_point(numba.carray(x_, (dim,)), data, numba.carray(out_, (expanded,)))
    return 0


_CFUNCS: dict[str, Any] = {}


def kernel_is_compiled() -> bool:
    """Whether this process has the C callbacks already (compiled or loaded from cache)."""
    return bool(_CFUNCS)


def _cfuncs() -> tuple[Any, Any]:
    """The two C callbacks, compiled on first use (numba caches them on disk)."""
    if not _CFUNCS:
        _CFUNCS["logp"] = numba.cfunc(_LOGP_SIG, cache=True, error_model="numpy")(_logp_c)
        _CFUNCS["expand"] = numba.cfunc(_EXPAND_SIG, cache=True, error_model="numpy")(_expand_c)
    return _CFUNCS["logp"], _CFUNCS["expand"]


# ---------------------------------------------------------------- names and initial point


def variable_names(
    groups: tuple[str, ...], centered: tuple[bool, ...]
) -> tuple[list[str], list[str]]:
    """(unconstrained value-variable names, constrained variable names), PyMC's spelling."""
    zs = [("dev" if c else "z") + f"_slope_effect_{g}" for g, c in zip(groups, centered, strict=True)]
    value = [
        "intercept", "slope", "arm_intercept", "slope_effect",
        "sd_intercept_log__", "sd_slope_log__", "corr_beta_logodds__", "sd_residual_log__",
    ]
    constrained = ["sd_intercept", "sd_slope", "corr_beta", "sd_residual"]
    for g, z in zip(groups, zs, strict=True):
        value += [f"sd_slope_effect_{g}_log__", f"{z}_zerosum__"]
        constrained += [f"sd_slope_effect_{g}", z]
    return value, constrained


def support_point(priors: GrowthPriors, group_sizes: tuple[int, ...]) -> np.ndarray:
    """PyMC's ``support_point`` initial values, transformed.

    Normal: mu; HalfNormal: sigma; Beta(eta, eta): 1/2; ZeroSumNormal: 0.
    """
    head = [
        priors.intercept.mu, priors.slope.mu, priors.arm_intercept.mu, priors.slope_effect.mu,
        math.log(priors.sd_intercept.sigma), math.log(priors.sd_slope.sigma), 0.0,
        math.log(priors.sd_residual.sigma),
    ]
    for size in group_sizes:
        head += [math.log(priors.sd_group_effect.sigma)] + [0.0] * (int(size) - 1)
    return np.asarray(head, dtype=np.float64)


# ---------------------------------------------------------------- the nutpie model


@dataclass(frozen=True)
class KernelGrowthModel(CompiledModel):
    """A nutpie ``CompiledModel`` whose logp and expand are this module's C callbacks.

    ``with_data(data=GrowthData)`` rebinds it to other data of the same structure (pooled
    factors and their numbers of levels); the callbacks themselves never recompile.
    Built on nutpie's ``_lib.PyMcModel`` (nutpie 0.16), the object nutpie's own numba path
    builds from a ``CompiledPyMCModel``.
    """

    packed: np.ndarray
    n_dim_: int
    n_expanded: int
    names: list[str]
    shapes_: list[tuple[int, ...]]
    init: np.ndarray
    centered: tuple[bool, ...]
    group_sizes: tuple[int, ...]
    coords_: dict[str, Any]
    _transform_adapt_args: dict | None = None

    @property
    def n_dim(self) -> int:
        """Length of the unconstrained parameter vector."""
        return self.n_dim_

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every stored variable, by name."""
        return dict(zip(self.names, self.shapes_, strict=True))

    @property
    def coords(self) -> dict[str, Any]:
        """Coordinates of the stored variables' dimensions."""
        return self.coords_

    def with_data(self, **values: Any) -> KernelGrowthModel:
        """Rebind to ``data=`` (a ``GrowthData``) and ``priors=`` (``GrowthPriors``)."""
        data, priors = values["data"], values["priors"]
        sizes = tuple(int(s) for s in data.design.group_sizes)
        if sizes != self.group_sizes:
            raise ValueError(
                f"with_data needs data of the same structure (levels per factor {self.group_sizes}"
                f", got {sizes})"
            )
        packed, _, _ = _pack(data, priors, self.centered)
        init = support_point(priors, sizes)
        return dataclasses.replace(self, packed=packed, init=init)

    def _initial_point(self, seed: int) -> np.ndarray:
        # PyMC's jitter: U(-1, 1) added to every transformed initial value
        return self.init + np.random.default_rng(seed).uniform(-1.0, 1.0, self.n_dim_)

    def _make_model(self, init_mean: Any) -> Any:  # noqa: ARG002 (nutpie's signature)
        from nutpie import _lib

        logp_c, expand_c = _cfuncs()
        ptr = self.packed.ctypes.data
        logp_fn = _lib.LogpFunc(logp_c.address, ptr, self)
        expand_fn = _lib.ExpandFunc(self.n_dim_, self.n_expanded, expand_c.address, ptr, self)
        dim_sizes = {name: len(values) for name, values in self.coords_.items()}
        variables = _lib.PyVariable.new_variables(
            self.names, ["float64"] * len(self.names), self.shapes_, dim_sizes, dict(self.dims)
        )

        def make_adapter(*args: Any, **kwargs: Any) -> Any:
            from nutpie.transform_adapter import make_transform_adapter

            return make_transform_adapter(**(self._transform_adapt_args or {}))(
                *args, **kwargs, logp_fn=None
            )

        return _lib.PyMcModel(
            logp_fn, expand_fn, variables, self.n_dim_, dim_sizes, dict(self.coords_),
            self._initial_point, make_adapter,
        )

    def _make_sampler(self, settings: Any, init_mean: Any, cores: int, progress_type: Any,
                      store: Any) -> Any:
        from nutpie import _lib

        return _lib.PySampler.from_pymc(
            settings, cores, self._make_model(init_mean), progress_type, store
        )


def build_kernel_model(spec: GrowthModelSpec, data: GrowthData) -> KernelGrowthModel:
    """The marginal growth model of ``spec`` on ``data`` as a nutpie-ready compiled model."""
    design = data.design
    priors = spec.resolved_priors(design.final_time)
    centered = tuple(bool(c) for c in spec.centered_groups(design))
    sizes = tuple(int(s) for s in design.group_sizes)
    packed, n_dim, n_expanded = _pack(data, priors, centered)
    value, constrained = variable_names(tuple(design.groups), centered)
    shapes: list[tuple[int, ...]] = [()] * 8
    for size in sizes:
        shapes += [(), (size - 1,)]
    shapes += [()] * 4
    for size in sizes:
        shapes += [(), (size,)]
    # dims and coordinates as nutpie's PyMC path gives them: the level deviations by level,
    # the zero-sum values and the flat unconstrained vector by position
    import pandas as pd

    dims: dict[str, tuple[str, ...]] = {}
    coords: dict[str, Any] = {}
    flat: list[str] = []
    for name, shape in zip(value, shapes[: len(value)], strict=True):
        if shape:
            dims[name] = (f"{name}_dim_0",)
            coords[f"{name}_dim_0"] = pd.RangeIndex(shape[0])
            flat += [f"{name}_{i}" for i in range(shape[0])]
        else:
            flat.append(name)
    for g, z in zip(design.groups, constrained[5::2], strict=True):
        dims[z] = (g,)
        coords[g] = pd.Index(list(design.levels[g]))
    coords["unconstrained_parameter"] = pd.Index(flat)
    _cfuncs()
    return KernelGrowthModel(
        dims=dims,
        coords_=coords,
        packed=packed,
        n_dim_=n_dim,
        n_expanded=n_expanded,
        names=value + constrained,
        shapes_=shapes,
        init=support_point(priors, sizes),
        centered=centered,
        group_sizes=sizes,
    )
