"""Measurement invariance across groups by multi-group confirmatory factor analysis (ML).

Three nested models are fitted by maximum likelihood, as lavaan does with
``cfa(model, group = g, group.equal = ...)`` (lavaan 0.6 defaults: marker-variable
identification with the first item of each factor loading 1, ``std.lv = FALSE``; mean
structure in multi-group models; ``likelihood = "normal"``):

``configural``
    Same factor structure in every group; all parameters free per group; item
    intercepts free, factor means fixed at 0.
``metric``
    Loadings equal across groups (``group.equal = "loadings"``).
``scalar``
    Loadings and intercepts equal (``c("loadings", "intercepts")``); factor means fixed
    at 0 in the first group and free in the others.

The ML discrepancy of group ``g`` (``S_g`` with divisor ``N_g``, Joreskog 1971;
Bollen 1989, ch. 4 and 8) is ``F_g = log|Sigma| + tr(S Sigma^-1) - log|S| - p +
(xbar - mu)' Sigma^-1 (xbar - mu)``; the test statistic is ``chi2 = sum_g N_g F_g``.
It is minimised with scipy's L-BFGS-B and analytic gradients. Fit indices as lavaan:
CFI and TLI against the independence (baseline) model with free variances and means
per group (Bentler 1990; Tucker & Lewis 1973); RMSEA ``sqrt(max(chi2/df - 1, 0) / N)
* sqrt(G)`` (Steiger 1998's multi-group correction); SRMR as Bentler's (residual
covariances and means standardised by the observed standard deviations), averaged over
groups weighted by ``N_g``. Rows with a missing item are dropped (lavaan's default
listwise deletion for ML).

Decisions between levels: the chi-square difference test, and the change in fit
indices of Cheung & Rensvold (2002) and Chen (2007). By default a level holds when the
previous one holds and CFI drops by at most 0.01 (Cheung & Rensvold's criterion); ΔRMSEA
(limit +0.015, Chen 2007) is reported beside it and is part of the decision with
``index_rule = "cfi_and_rmsea"``. ΔRMSEA is not the default because RMSEA is truncated at
0 and unstable at small df: on data simulated from an exactly invariant two-factor model
(500 per group, df 16 -> 20) the strict rule rejected metric invariance in 4 of 40
replications, the ΔCFI rule in none (``tests/instruments/test_invariance.py``).

References
----------
Joreskog KG (1971). Simultaneous factor analysis in several populations.
Psychometrika 36:409-426.
Meredith W (1993). Measurement invariance, factor analysis and factorial invariance.
Psychometrika 58:525-543.
Cheung GW, Rensvold RB (2002). Evaluating goodness-of-fit indexes for testing
measurement invariance. Struct Equ Modeling 9:233-255.
Chen FF (2007). Sensitivity of goodness of fit indexes to lack of measurement
invariance. Struct Equ Modeling 14:464-504.
Rosseel Y (2012). lavaan: an R package for structural equation modeling. J Stat Softw
48(2):1-36.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
from scipy import linalg, optimize, stats

InvarianceLevel = Literal["configural", "metric", "scalar"]
DecisionRule = Literal["fit_indices", "chisq", "both"]
IndexRule = Literal["cfi", "cfi_and_rmsea"]
InvarianceCode = Literal[
    "ok",
    "not_converged",
    "group_too_small",
    "too_few_groups",
    "not_identified",
    "previous_level_failed",
    "configural_misfit",
]
LEVELS: tuple[InvarianceLevel, ...] = ("configural", "metric", "scalar")

LEVEL_COLUMNS: dict[str, pl.DataType] = {
    "level": pl.String(),
    "npar": pl.Int64(),
    "chisq": pl.Float64(),
    "df": pl.Int64(),
    "pvalue": pl.Float64(),
    "cfi": pl.Float64(),
    "tli": pl.Float64(),
    "rmsea": pl.Float64(),
    "srmr": pl.Float64(),
    "baseline_chisq": pl.Float64(),
    "baseline_df": pl.Int64(),
    "delta_chisq": pl.Float64(),
    "delta_df": pl.Int64(),
    "delta_p": pl.Float64(),
    "delta_cfi": pl.Float64(),
    "delta_rmsea": pl.Float64(),
    "converged": pl.Boolean(),
    "holds": pl.Boolean(),
    "decision": pl.String(),
    "message": pl.String(),
}
ESTIMATE_COLUMNS: dict[str, pl.DataType] = {
    "level": pl.String(),
    "group": pl.String(),
    "lhs": pl.String(),
    "op": pl.String(),
    "rhs": pl.String(),
    "est": pl.Float64(),
    "free": pl.Boolean(),
}


@dataclass(frozen=True)
class InvarianceConfig:
    """Options of :func:`fit_invariance`.

    Parameters
    ----------
    levels
        Levels to fit, in order (each is compared with the one before).
    min_group_size
        Groups with fewer complete rows than this, or than ``p + 1`` items, make the
        result carry ``group_too_small`` and no model is fitted.
    max_delta_cfi, max_delta_rmsea
        A level holds when CFI drops by at most ``max_delta_cfi`` and RMSEA rises by at
        most ``max_delta_rmsea`` relative to the previous level (Chen 2007).
    min_cfi, max_rmsea
        Configural model fit needed for configural invariance to hold (Hu & Bentler
        1999 give 0.95/0.06 for good fit; 0.90/0.08 are the common "acceptable" bounds).
    alpha
        Level of the chi-square difference test.
    decision
        ``fit_indices`` (default: change in fit indices, see ``index_rule``; the chi-square
        difference rejects trivial differences at large N), ``chisq`` (Δχ² p >= alpha),
        or ``both``.
    index_rule
        ``cfi`` (default): ΔCFI >= -max_delta_cfi; ``cfi_and_rmsea``: also ΔRMSEA <=
        max_delta_rmsea.
    gtol
        Convergence: largest absolute gradient of ``sum_g (N_g/N) F_g`` accepted.
    """

    levels: Sequence[InvarianceLevel] = LEVELS
    min_group_size: int = 30
    max_delta_cfi: float = 0.01
    max_delta_rmsea: float = 0.015
    min_cfi: float = 0.90
    max_rmsea: float = 0.08
    alpha: float = 0.05
    decision: DecisionRule = "fit_indices"
    index_rule: IndexRule = "cfi"
    gtol: float = 1e-6
    max_iter: int = 20_000

    def __post_init__(self) -> None:
        bad = [lv for lv in self.levels if lv not in LEVELS]
        if bad or not self.levels:
            raise ValueError(f"levels must be a non-empty subset of {LEVELS}: {bad}")
        if self.decision not in ("fit_indices", "chisq", "both"):
            raise ValueError(f"unknown decision rule {self.decision!r}")
        if self.index_rule not in ("cfi", "cfi_and_rmsea"):
            raise ValueError(f"unknown index rule {self.index_rule!r}")


@dataclass(frozen=True)
class CfaFit:
    """One fitted (multi-group) CFA model: fit measures and estimates."""

    level: str
    npar: int
    chisq: float
    df: int
    pvalue: float
    cfi: float
    tli: float
    rmsea: float
    srmr: float
    baseline_chisq: float
    baseline_df: int
    converged: bool
    max_gradient: float
    estimates: pl.DataFrame
    message: str = "ok"


@dataclass(frozen=True)
class InvarianceResult:
    """Fit of each invariance level and the decisions between levels.

    Attributes
    ----------
    levels
        One row per level; columns as :data:`LEVEL_COLUMNS`.
    estimates
        Parameter estimates per level and group (lavaan's ``lhs, op, rhs`` notation:
        ``=~`` loading, ``~~`` (co)variance, ``~1`` intercept or factor mean).
    groups
        ``group, n`` (complete rows used per group, in order of first appearance).
    message
        ``ok`` or a code of :data:`InvarianceCode` when nothing could be fitted.
    """

    levels: pl.DataFrame
    estimates: pl.DataFrame
    groups: pl.DataFrame
    message: str = "ok"
    config: InvarianceConfig = field(default_factory=InvarianceConfig)

    def to_frame(self) -> pl.DataFrame:
        """Level table: fit measures, differences from the previous level, decision."""
        return self.levels

    def estimates_frame(self) -> pl.DataFrame:
        """Parameter estimates by level and group."""
        return self.estimates


# --------------------------------------------------------------------------- model spec


@dataclass
class _Spec:
    """Index arrays mapping the free-parameter vector to each group's matrices (-1 = fixed)."""

    lam: np.ndarray  # (G, p, m)
    lam_fixed: np.ndarray  # (p, m) values where fixed
    phi: np.ndarray  # (G, m, m), symmetric
    theta: np.ndarray  # (G, p)
    nu: np.ndarray  # (G, p)
    alpha: np.ndarray  # (G, m)
    npar: int
    meanstructure: bool


def _build_spec(
    p: int, m: int, assign: np.ndarray, n_groups: int, level: str, meanstructure: bool
) -> _Spec:
    counter = iter(range(10**9))
    lam = np.full((n_groups, p, m), -1)
    lam_fixed = np.zeros((p, m))
    markers = {int(np.flatnonzero(assign == f)[0]) for f in range(m)}
    for j in range(p):
        if j in markers:
            lam_fixed[j, assign[j]] = 1.0
    equal_lam = level in ("metric", "scalar")
    equal_nu = level == "scalar"
    shared: dict[tuple, int] = {}

    def new(key: tuple, equal: bool) -> int:
        if equal:
            if key not in shared:
                shared[key] = next(counter)
            return shared[key]
        return next(counter)

    phi = np.full((n_groups, m, m), -1)
    theta = np.full((n_groups, p), -1)
    nu = np.full((n_groups, p), -1)
    alpha = np.full((n_groups, m), -1)
    for g in range(n_groups):
        for j in range(p):
            if j not in markers:
                lam[g, j, assign[j]] = new(("lam", j), equal_lam)
        for a in range(m):
            for b in range(a + 1):
                phi[g, a, b] = phi[g, b, a] = next(counter)
        for j in range(p):
            theta[g, j] = next(counter)
        if meanstructure:
            for j in range(p):
                nu[g, j] = new(("nu", j), equal_nu)
            if equal_nu and g > 0:
                for a in range(m):
                    alpha[g, a] = next(counter)
    return _Spec(lam, lam_fixed, phi, theta, nu, alpha, next(counter), meanstructure)


def _matrices(theta_vec: np.ndarray, spec: _Spec, g: int) -> tuple[np.ndarray, ...]:
    def fill(idx: np.ndarray, fixed: np.ndarray | float) -> np.ndarray:
        return np.where(idx >= 0, theta_vec[np.maximum(idx, 0)], fixed)

    lam = fill(spec.lam[g], spec.lam_fixed)
    phi = fill(spec.phi[g], 0.0)
    th = fill(spec.theta[g], 0.0)
    nu = fill(spec.nu[g], 0.0)
    al = fill(spec.alpha[g], 0.0)
    return lam, phi, th, nu, al


def _objective(
    theta_vec: np.ndarray,
    spec: _Spec,
    s: list[np.ndarray],
    xbar: list[np.ndarray],
    logdet_s: list[float],
    w: np.ndarray,
) -> tuple[float, np.ndarray]:
    """``sum_g w_g F_g`` and its gradient (``w_g = N_g / N``)."""
    total = 0.0
    grad = np.zeros_like(theta_vec)
    p = s[0].shape[0]
    for g in range(len(s)):
        lam, phi, th, nu, al = _matrices(theta_vec, spec, g)
        sigma = lam @ phi @ lam.T + np.diag(th)
        try:
            c = linalg.cho_factor(sigma, lower=True, check_finite=False)
        except linalg.LinAlgError:
            return 1e10, np.zeros_like(theta_vec)
        logdet = 2.0 * np.sum(np.log(np.diag(c[0])))
        inv = linalg.cho_solve(c, np.eye(p), check_finite=False)
        f = logdet + np.sum(s[g] * inv) - logdet_s[g] - p
        gmat = inv - inv @ s[g] @ inv
        if spec.meanstructure:
            d = xbar[g] - (nu + lam @ al)
            invd = inv @ d
            f += d @ invd
            gmat -= np.outer(invd, invd)
            h = -2.0 * invd
        total += w[g] * f
        d_lam = 2.0 * gmat @ lam @ phi
        d_phi = lam.T @ gmat @ lam
        d_th = np.diag(gmat)
        if spec.meanstructure:
            d_lam = d_lam + np.outer(h, al)
            np.add.at(grad, spec.nu[g][spec.nu[g] >= 0], w[g] * h[spec.nu[g] >= 0])
            a_idx = spec.alpha[g]
            np.add.at(grad, a_idx[a_idx >= 0], w[g] * (lam.T @ h)[a_idx >= 0])
        li = spec.lam[g]
        np.add.at(grad, li[li >= 0], w[g] * d_lam[li >= 0])
        np.add.at(grad, spec.phi[g].ravel(), w[g] * d_phi.ravel())
        np.add.at(grad, spec.theta[g], w[g] * d_th)
    return float(total), grad


def _start(spec: _Spec, s: list[np.ndarray], xbar: list[np.ndarray], assign: np.ndarray):
    """Starting values: marker-scaled covariances, half the variance as residual."""
    acc = np.zeros(spec.npar)
    cnt = np.zeros(spec.npar)
    m = spec.phi.shape[1]
    for g, sg in enumerate(s):
        lam = spec.lam_fixed.copy()
        phi = np.zeros((m, m))
        for f in range(m):
            items = np.flatnonzero(assign == f)
            mk = items[0]
            others = items[1:]
            est = [
                sg[mk, a] * sg[mk, b] / sg[a, b]
                for a in others
                for b in others
                if a < b and abs(sg[a, b]) > 1e-12
            ]
            v = float(np.median(est)) if est else 0.5 * sg[mk, mk]
            if not 0.05 * sg[mk, mk] < v < sg[mk, mk]:
                v = 0.5 * sg[mk, mk]
            phi[f, f] = v
            for j in others:
                lam[j, f] = sg[j, mk] / v
        for a in range(m):
            for b in range(a):
                ia, ib = np.flatnonzero(assign == a)[0], np.flatnonzero(assign == b)[0]
                phi[a, b] = phi[b, a] = 0.5 * sg[ia, ib]
        vals = [
            (spec.lam[g], lam),
            (spec.phi[g], phi),
            (spec.theta[g], 0.5 * np.diag(sg)),
            (spec.nu[g], xbar[g]),
            (spec.alpha[g], np.zeros(m)),
        ]
        for idx, val in vals:
            sel = idx >= 0
            np.add.at(acc, idx[sel], val[sel])
            np.add.at(cnt, idx[sel], 1.0)
    return acc / np.maximum(cnt, 1.0)


def _fit_level(
    level: str,
    spec: _Spec,
    s: list[np.ndarray],
    xbar: list[np.ndarray],
    n_g: np.ndarray,
    assign: np.ndarray,
    items: list[str],
    factors: list[str],
    groups: list[str],
    config: InvarianceConfig,
) -> CfaFit:
    p = s[0].shape[0]
    n_total = float(n_g.sum())
    w = n_g / n_total
    logdet_s = [float(np.linalg.slogdet(sg)[1]) for sg in s]
    x0 = _start(spec, s, xbar, assign)
    # variances stay positive (a Heywood case is then reported as non-convergence)
    bounds = [(None, None)] * spec.npar
    for g in range(len(s)):
        for i in spec.theta[g]:
            bounds[i] = (1e-8, None)
        for a in range(spec.phi.shape[1]):
            bounds[spec.phi[g, a, a]] = (1e-8, None)
    res = optimize.minimize(
        _objective,
        x0,
        args=(spec, s, xbar, logdet_s, w),
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={
            "maxiter": config.max_iter,
            "maxfun": 4 * config.max_iter,
            "ftol": 1e-16,
            "gtol": 1e-12,
            "maxcor": 30,
        },
    )
    fmin, grad = _objective(res.x, spec, s, xbar, logdet_s, w)
    max_grad = float(np.max(np.abs(grad)))
    converged = bool(np.isfinite(fmin) and fmin < 1e9 and max_grad <= config.gtol)
    chisq = n_total * fmin
    moments = len(s) * (p * (p + 1) // 2 + (p if spec.meanstructure else 0))
    df = moments - spec.npar
    base_chisq = float(
        sum(n_g[g] * (np.sum(np.log(np.diag(s[g]))) - logdet_s[g]) for g in range(len(s)))
    )
    base_df = len(s) * p * (p - 1) // 2
    t1 = max(chisq - df, 0.0)
    t2 = max(chisq - df, base_chisq - base_df, 0.0)
    cfi = 1.0 if t2 == 0 else 1.0 - t1 / t2
    tli = 1.0 if df == 0 else (base_chisq / base_df - chisq / df) / (base_chisq / base_df - 1.0)
    rmsea = (
        0.0
        if df == 0
        else float(np.sqrt(max(chisq / n_total / df - 1.0 / n_total, 0.0)) * np.sqrt(len(s)))
    )
    srmr_g = []
    rows = []
    for g in range(len(s)):
        lam, phi, th, nu, al = _matrices(res.x, spec, g)
        sigma = lam @ phi @ lam.T + np.diag(th)
        sd = np.sqrt(np.diag(s[g]))
        resid = (s[g] - sigma) / np.outer(sd, sd)
        il = np.tril_indices(p)
        ss = np.sum(resid[il] ** 2)
        e = p * (p + 1) / 2
        if spec.meanstructure:
            ss += np.sum(((xbar[g] - (nu + lam @ al)) / sd) ** 2)
            e += p
        srmr_g.append(np.sqrt(ss / e))
        for j in range(p):
            for f in range(len(factors)):
                if spec.lam[g, j, f] >= 0 or spec.lam_fixed[j, f] != 0:
                    rows.append(
                        (
                            level,
                            groups[g],
                            factors[f],
                            "=~",
                            items[j],
                            lam[j, f],
                            bool(spec.lam[g, j, f] >= 0),
                        )
                    )
        for j in range(p):
            rows.append((level, groups[g], items[j], "~~", items[j], th[j], True))
        for a in range(len(factors)):
            for b in range(a, len(factors)):
                rows.append((level, groups[g], factors[a], "~~", factors[b], phi[a, b], True))
        if spec.meanstructure:
            for j in range(p):
                rows.append((level, groups[g], items[j], "~1", "", nu[j], True))
            for a in range(len(factors)):
                rows.append(
                    (level, groups[g], factors[a], "~1", "", al[a], bool(spec.alpha[g, a] >= 0))
                )
    srmr = float(np.sum(np.array(srmr_g) * w))
    est = pl.DataFrame(rows, schema=ESTIMATE_COLUMNS, orient="row")
    return CfaFit(
        level=level,
        npar=spec.npar,
        chisq=float(chisq),
        df=int(df),
        pvalue=float(stats.chi2.sf(chisq, df)) if df > 0 else float("nan"),
        cfi=float(cfi),
        tli=float(tli),
        rmsea=rmsea,
        srmr=srmr,
        baseline_chisq=base_chisq,
        baseline_df=int(base_df),
        converged=converged,
        max_gradient=max_grad,
        estimates=est,
        message="ok" if converged else "not_converged",
    )


def _prepare(
    data: pl.DataFrame, structure: Mapping[str, Sequence[str]], group: str | None
) -> tuple[list[str], list[str], np.ndarray, pl.DataFrame]:
    if not structure:
        raise ValueError("structure must name at least one factor")
    factors = list(structure)
    items: list[str] = []
    assign_l: list[int] = []
    for f, its in enumerate(structure.values()):
        for it in its:
            if it in items:
                raise ValueError(f"item {it!r} is assigned to more than one factor")
            items.append(it)
            assign_l.append(f)
    need = set(items) | ({group} if group else set())
    missing = need - set(data.columns)
    if missing:
        raise ValueError(f"data lacks columns {sorted(missing)}")
    cols = [pl.col(it).cast(pl.Float64) for it in items]
    if group:
        cols.append(pl.col(group).cast(pl.String).alias("__group"))
    frame = data.select(cols).drop_nulls().filter(pl.all_horizontal(pl.col(items).is_finite()))
    return factors, items, np.array(assign_l), frame


def fit_cfa(
    data: pl.DataFrame,
    structure: Mapping[str, Sequence[str]],
    group: str | None = None,
    level: InvarianceLevel = "configural",
    config: InvarianceConfig | None = None,
) -> CfaFit:
    """Fit one (multi-group) CFA by maximum likelihood.

    With ``group=None`` this is lavaan's single-group ``cfa(model, data)``: covariance
    structure only (no mean structure, since the means are saturated). With a group,
    ``level`` picks the equality constraints (see the module docstring).

    Parameters
    ----------
    data
        One row per respondent, one numeric column per item (+ the group column); rows
        with a missing item are dropped.
    structure
        ``{factor: [items]}``; the first item of each factor is its marker (loading 1).
    group
        Grouping column (country, language, cohort, ...), or None.
    level
        ``configural``, ``metric`` or ``scalar`` (ignored without a group).
    config
        :class:`InvarianceConfig` (convergence settings).

    Returns
    -------
    CfaFit
        Fit measures (chisq, df, pvalue, cfi, tli, rmsea, srmr) and estimates;
        ``message`` is ``ok``, ``not_converged``, ``not_identified`` (a factor with fewer
        than 2 items in a one-factor model, or more parameters than moments) or
        ``group_too_small``.
    """
    config = config or InvarianceConfig()
    factors, items, assign, frame = _prepare(data, structure, group)
    if group:
        groups = frame["__group"].unique(maintain_order=True).to_list()
        parts = [frame.filter(pl.col("__group") == g).select(items).to_numpy() for g in groups]
    else:
        groups = ["all"]
        parts = [frame.select(items).to_numpy()]
    n_g = np.array([x.shape[0] for x in parts], dtype=np.float64)
    return _fit_parts(
        level if group else "one_group",
        parts,
        n_g,
        assign,
        items,
        factors,
        [str(g) for g in groups],
        bool(group),
        config,
    )


def _fit_parts(level, parts, n_g, assign, items, factors, groups, meanstructure, config):
    p = len(items)
    if np.any(n_g < max(config.min_group_size, p + 1)):
        return _failed(level, "group_too_small")
    xbar = [x.mean(axis=0) for x in parts]
    s = [np.cov(x, rowvar=False, ddof=0) for x in parts]
    if any(np.linalg.eigvalsh(sg)[0] <= 0 for sg in s):
        return _failed(level, "not_identified")
    spec = _build_spec(p, len(factors), assign, len(parts), level, meanstructure)
    moments = len(parts) * (p * (p + 1) // 2 + (p if meanstructure else 0))
    if spec.npar > moments or (len(factors) == 1 and p < 3):
        return _failed(level, "not_identified")
    return _fit_level(level, spec, s, xbar, n_g, assign, items, factors, groups, config)


def _failed(level: str, code: str) -> CfaFit:
    nan = float("nan")
    return CfaFit(
        level,
        0,
        nan,
        0,
        nan,
        nan,
        nan,
        nan,
        nan,
        nan,
        0,
        False,
        nan,
        pl.DataFrame(schema=ESTIMATE_COLUMNS),
        code,
    )


def fit_invariance(
    data: pl.DataFrame,
    structure: Mapping[str, Sequence[str]],
    group: str,
    config: InvarianceConfig | None = None,
) -> InvarianceResult:
    """Configural, metric and scalar invariance of a factor structure across groups.

    Parameters
    ----------
    data
        One row per respondent (one wave): item columns and the ``group`` column. Rows
        with a missing item are dropped (listwise, as lavaan's default for ML).
    structure
        ``{factor: [items]}``, e.g. an instrument's domains; the first item of each factor
        is its marker. Each factor needs 3+ items, or 2 items and a second factor.
    group
        Grouping column (country, language, cohort, ...).
    config
        :class:`InvarianceConfig`: decision thresholds, minimum group size.

    Returns
    -------
    InvarianceResult
        ``to_frame()``: level, npar, chisq, df, pvalue, cfi, tli, rmsea, srmr, baseline
        chisq/df, delta_chisq, delta_df, delta_p (chi-square difference test against the
        previous level), delta_cfi (this level minus the previous; negative = worse),
        delta_rmsea, converged, holds, decision (text), message. Expected failures (a
        group too small, fewer than two groups, non-convergence) come back as codes.
    """
    config = config or InvarianceConfig()
    factors, items, assign, frame = _prepare(data, structure, group)
    counts = frame.group_by("__group", maintain_order=True).len()
    groups = counts["__group"].to_list()
    n_g = counts["len"].to_numpy().astype(np.float64)
    group_frame = pl.DataFrame(
        {"group": [str(g) for g in groups], "n": n_g.astype(np.int64)},
        schema={"group": pl.String(), "n": pl.Int64()},
    )
    empty_levels = pl.DataFrame(schema=LEVEL_COLUMNS)
    empty_est = pl.DataFrame(schema=ESTIMATE_COLUMNS)
    if len(groups) < 2:
        return InvarianceResult(empty_levels, empty_est, group_frame, "too_few_groups", config)
    if np.any(n_g < max(config.min_group_size, len(items) + 1)):
        return InvarianceResult(empty_levels, empty_est, group_frame, "group_too_small", config)
    parts = [frame.filter(pl.col("__group") == g).select(items).to_numpy() for g in groups]
    fits = [
        _fit_parts(lv, parts, n_g, assign, items, factors, [str(g) for g in groups], True, config)
        for lv in config.levels
    ]
    rows = []
    prev: CfaFit | None = None
    prev_holds = True
    for fit in fits:
        row = {c: None for c in LEVEL_COLUMNS}
        row.update(
            level=fit.level,
            npar=fit.npar,
            chisq=fit.chisq,
            df=fit.df,
            pvalue=fit.pvalue,
            cfi=fit.cfi,
            tli=fit.tli,
            rmsea=fit.rmsea,
            srmr=fit.srmr,
            baseline_chisq=fit.baseline_chisq,
            baseline_df=fit.baseline_df,
            converged=fit.converged,
            message=fit.message,
        )
        if not fit.converged:
            row.update(holds=None, decision=f"{fit.level}: not decided ({fit.message})")
            prev_holds = False
        elif prev is None:
            ok = fit.cfi >= config.min_cfi and fit.rmsea <= config.max_rmsea
            row.update(
                holds=bool(ok),
                decision=(
                    f"{fit.level} {'holds' if ok else 'does not hold'}: CFI = {fit.cfi:.3f} "
                    f"(>= {config.min_cfi}), RMSEA = {fit.rmsea:.3f} (<= {config.max_rmsea})"
                ),
            )
            if not ok:
                row["message"] = "configural_misfit"
            prev_holds = bool(ok)
        else:
            d_chi = fit.chisq - prev.chisq
            d_df = fit.df - prev.df
            d_p = float(stats.chi2.sf(max(d_chi, 0.0), d_df)) if d_df > 0 else float("nan")
            d_cfi = fit.cfi - prev.cfi
            d_rmsea = fit.rmsea - prev.rmsea
            by_index = -d_cfi <= config.max_delta_cfi
            if config.index_rule == "cfi_and_rmsea":
                by_index = by_index and d_rmsea <= config.max_delta_rmsea
            by_chisq = bool(d_p >= config.alpha) if np.isfinite(d_p) else True
            crit = {"fit_indices": by_index, "chisq": by_chisq, "both": by_index and by_chisq}[
                config.decision
            ]
            holds = bool(crit and prev_holds)
            why = (
                f"ΔCFI = {d_cfi:+.3f} (limit -{config.max_delta_cfi}), ΔRMSEA = "
                f"{d_rmsea:+.3f} (limit +{config.max_delta_rmsea}), Δχ²({d_df}) = "
                f"{d_chi:.2f}, p = {d_p:.3g}"
            )
            if holds:
                text = f"{fit.level} holds: {why}"
            elif crit and not prev_holds:
                text = f"{fit.level} not supported: a previous level does not hold ({why})"
                row["message"] = "previous_level_failed"
            else:
                text = f"{fit.level} does not hold: {why}"
            row.update(
                delta_chisq=d_chi,
                delta_df=d_df,
                delta_p=d_p,
                delta_cfi=d_cfi,
                delta_rmsea=d_rmsea,
                holds=holds,
                decision=text,
            )
            prev_holds = holds
        rows.append(row)
        prev = fit if fit.converged else prev
    levels = pl.DataFrame(rows, schema=LEVEL_COLUMNS).with_columns(
        pl.col(pl.Float64).fill_nan(None)
    )
    est = pl.concat([f.estimates for f in fits]) if fits else empty_est
    return InvarianceResult(levels, est, group_frame, "ok", config)
