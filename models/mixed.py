"""Linear mixed model with a random intercept and slope per participant (REML).

The model for participant ``i`` at time ``t`` is

    y_it = x_it' beta + b0_i + b1_i * t + e_it,   (b0_i, b1_i) ~ N(0, G),  e_it ~ N(0, s2)

fitted by restricted maximum likelihood. Two engines give the same fit:

- ``profiled`` (default) minimises lme4's profiled REML/ML deviance over the relative
  covariance factor (Bates et al. 2015, J Stat Softw 67(1), eqs. 34 and 41), computed from
  per-participant sufficient statistics in vectorised numpy; fixed-effect covariance is then
  lme4's ``s2 (X' V^-1 X)^-1``. Seconds at thousands of participants.
- ``statsmodels`` fits :class:`statsmodels.regression.mixed_linear_model.MixedLM`; its
  fixed-effect SEs are recomputed lme4-style, ``sqrt(diag((X' V^-1 X)^-1))`` with
  ``V_i = Z_i G Z_i' + s2 I`` at the REML estimates, because ``bse_fe`` comes from the joint
  Hessian and can differ on unbalanced data. Slow beyond a few hundred participants and
  prone to non-convergence near the boundary; kept as a cross-check.

Degrees of freedom for tests use the between-within rule ``n_groups - p`` (p fixed effects),
a conservative stand-in for Satterthwaite's approximation in lmerTest.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
from scipy import optimize, stats
from statsmodels.regression.mixed_linear_model import MixedLM

MixedMessage = Literal["ok", "too_few_groups", "singular_fit", "not_converged", "fit_failed"]
MixedEngine = Literal["profiled", "statsmodels"]


@dataclass(frozen=True)
class MixedModelConfig:
    """Inputs of :func:`fit_mixed_model`.

    ``fixed`` names the fixed-effect columns (an intercept is added), ``time`` the column
    with the random slope, ``group`` the participant column, ``outcome`` the response.
    ``engine``: ``profiled`` (default) minimises lme4's profiled REML/ML deviance over the
    relative covariance factor with vectorised per-group sufficient statistics, fast at
    thousands of participants; ``statsmodels`` fits :class:`MixedLM` (slow beyond a few
    hundred groups and prone to non-convergence near the boundary; kept as a cross-check).
    """

    outcome: str = "score"
    fixed: tuple[str, ...] = ("wave",)
    time: str = "wave"
    group: str = "participant_id"
    reml: bool = True
    alpha: float = 0.05
    engine: MixedEngine = "profiled"


@dataclass(frozen=True)
class MixedModelResult:
    """Fixed effects (lme4-style SEs), variance components and fit statistics."""

    terms: tuple[str, ...]
    estimate: np.ndarray
    std_error: np.ndarray
    df: float
    var_intercept: float
    var_slope: float
    cov_intercept_slope: float
    var_residual: float
    log_likelihood: float
    n_obs: int
    n_groups: int
    converged: bool
    message: MixedMessage = "ok"
    alpha: float = 0.05
    extra: dict[str, float] = field(default_factory=dict)

    def coefficient(self, term: str) -> tuple[float, float]:
        """Estimate and standard error of one fixed-effect term."""
        i = self.terms.index(term)
        return float(self.estimate[i]), float(self.std_error[i])

    def to_frame(self) -> pl.DataFrame:
        """One row per fixed effect: term, estimate, std_error, t, df, p_value, ci bounds."""
        t = self.estimate / self.std_error
        q = stats.t.ppf(1 - self.alpha / 2, self.df)
        return pl.DataFrame(
            {
                "term": list(self.terms),
                "estimate": self.estimate,
                "std_error": self.std_error,
                "t": t,
                "df": np.full(len(self.terms), self.df),
                "p_value": 2 * stats.t.sf(np.abs(t), self.df),
                "ci_low": self.estimate - q * self.std_error,
                "ci_high": self.estimate + q * self.std_error,
                "message": [self.message] * len(self.terms),
            }
        )


def _empty(
    config: MixedModelConfig, terms: tuple[str, ...], n: int, g: int, msg: MixedMessage
) -> MixedModelResult:
    nan = float("nan")
    return MixedModelResult(
        terms=terms,
        estimate=np.full(len(terms), nan),
        std_error=np.full(len(terms), nan),
        df=nan,
        var_intercept=nan,
        var_slope=nan,
        cov_intercept_slope=nan,
        var_residual=nan,
        log_likelihood=nan,
        n_obs=n,
        n_groups=g,
        converged=False,
        message=msg,
        alpha=config.alpha,
    )


def lme4_fixed_effect_cov(
    exog: np.ndarray,
    exog_re: np.ndarray,
    group_codes: np.ndarray,
    cov_re: np.ndarray,
    scale: float,
) -> np.ndarray:
    """Covariance of the GLS fixed effects ``(sum_i X_i' V_i^-1 X_i)^-1`` (lme4's vcov).

    Uses the Woodbury identity per group, vectorised over groups:
    ``V_i^-1 = (I - Z_i M_i^-1 Z_i') / s2`` with ``M_i = s2 G^-1 + Z_i'Z_i``.

    Parameters
    ----------
    exog, exog_re
        Fixed (n x p) and random (n x q) design matrices.
    group_codes
        Integer group index 0..m-1 per row.
    cov_re
        Random-effects covariance G (q x q), in the response's units squared.
    scale
        Residual variance s2.
    """
    n, p = exog.shape
    m = int(group_codes.max()) + 1

    def group_cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        prod = (a[:, :, None] * b[:, None, :]).reshape(n, -1)
        out = np.zeros((m, prod.shape[1]))
        np.add.at(out, group_codes, prod)
        return out.reshape(m, a.shape[1], b.shape[1])

    xtx = exog.T @ exog
    xtz = group_cross(exog, exog_re)
    ztz = group_cross(exog_re, exog_re)
    m_mat = scale * np.linalg.inv(cov_re)[None, :, :] + ztz
    m_inv = np.linalg.inv(m_mat)
    correction = np.einsum("gpq,gqr,gsr->ps", xtz, m_inv, xtz)
    info = (xtx - correction) / scale
    return np.linalg.inv(info)


def _group_sums(a: np.ndarray, b: np.ndarray, codes: np.ndarray, m: int) -> np.ndarray:
    """Per-group cross-products ``sum_{i in g} a_i b_i'`` as an (m, a_cols, b_cols) array."""
    out = np.empty((m, a.shape[1], b.shape[1]))
    for j in range(a.shape[1]):  # columns, not rows: bincount sums each product by group
        for k in range(b.shape[1]):
            out[:, j, k] = np.bincount(codes, weights=a[:, j] * b[:, k], minlength=m)
    return out


@dataclass(frozen=True)
class _Suff:
    ztz: np.ndarray  # (m, q, q)
    ztx: np.ndarray  # (m, q, p)
    zty: np.ndarray  # (m, q)
    xtx: np.ndarray  # (p, p)
    xty: np.ndarray  # (p,)
    yty: float
    n: int
    p: int


def _lambda(theta: np.ndarray) -> np.ndarray:
    return np.array([[theta[0], 0.0], [theta[1], theta[2]]])


def _profiled(theta: np.ndarray, s: _Suff, reml: bool) -> tuple[float, dict[str, object]]:
    """lme4's profiled deviance (Bates et al. 2015, eqs. 34 and 41) at relative factor theta.

    With ``M_i = I + L'Z_i'Z_i L`` and ``U_i = L'Z_i'X_i``, ``u_i = L'Z_i'y_i``:
    ``A = X'X - sum U_i'M_i^-1 U_i``, ``c = X'y - sum U_i'M_i^-1 u_i``,
    ``r2 = y'y - sum u_i'M_i^-1 u_i - c'A^-1 c``; REML deviance
    ``sum log|M_i| + log|A| + (n-p)(1 + log(2 pi r2/(n-p)))``.
    """
    lam = _lambda(theta)
    mmat = np.eye(2)[None] + lam.T[None] @ s.ztz @ lam[None]
    # 2x2 inverse and log-determinant in closed form (batched over participants).
    det = mmat[:, 0, 0] * mmat[:, 1, 1] - mmat[:, 0, 1] * mmat[:, 1, 0]
    minv = np.empty_like(mmat)
    minv[:, 0, 0] = mmat[:, 1, 1] / det
    minv[:, 1, 1] = mmat[:, 0, 0] / det
    minv[:, 0, 1] = -mmat[:, 0, 1] / det
    minv[:, 1, 0] = -mmat[:, 1, 0] / det
    if not np.all(det > 0):
        return float("inf"), {}
    logdet_m = np.log(det)
    u_x = lam.T[None] @ s.ztx  # (m, q, p)
    u_y = s.zty @ lam  # (m, q)
    w_x = minv @ u_x
    w_y = np.einsum("gij,gj->gi", minv, u_y)
    a = s.xtx - np.einsum("giq,gir->qr", u_x, w_x)
    c = s.xty - np.einsum("giq,gi->q", u_x, w_y)
    d = s.yty - np.einsum("gi,gi->", u_y, w_y)
    try:
        beta = np.linalg.solve(a, c)
    except np.linalg.LinAlgError:
        return float("inf"), {}
    r2 = float(d - c @ beta)
    if not r2 > 0:
        return float("inf"), {}
    sign_a, logdet_a = np.linalg.slogdet(a)
    if sign_a <= 0:
        return float("inf"), {}
    if reml:
        dof = s.n - s.p
        dev = logdet_m.sum() + logdet_a + dof * (1 + np.log(2 * np.pi * r2 / dof))
        sigma2 = r2 / dof
    else:
        dev = logdet_m.sum() + s.n * (1 + np.log(2 * np.pi * r2 / s.n))
        sigma2 = r2 / s.n
    return float(dev), {"beta": beta, "a": a, "sigma2": sigma2, "lam": lam}


def _fit_profiled(
    y: np.ndarray, x: np.ndarray, z: np.ndarray, codes: np.ndarray, m: int, reml: bool
) -> tuple[dict[str, object], float, bool]:
    s = _Suff(
        ztz=_group_sums(z, z, codes, m),
        ztx=_group_sums(z, x, codes, m),
        zty=_group_sums(z, y[:, None], codes, m)[:, :, 0],
        xtx=x.T @ x,
        xty=x.T @ y,
        yty=float(y @ y),
        n=len(y),
        p=x.shape[1],
    )

    def objective(theta: np.ndarray) -> float:
        return _profiled(theta, s, reml)[0]

    bounds = [(0.0, None), (None, None), (0.0, None)]
    start = np.array([1.0, 0.0, 1.0])  # lme4's default start: G = s2 I
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # inf deviance outside the valid region makes finite differences warn; harmless.
        warnings.simplefilter("ignore", RuntimeWarning)
        return _optimise(objective, start, bounds, s, reml)


def _optimise(
    objective: Callable[[np.ndarray], float],
    start: np.ndarray,
    bounds: list[tuple[float | None, float | None]],
    s: _Suff,
    reml: bool,
) -> tuple[dict[str, object], float, bool]:
    best = optimize.minimize(objective, start, method="L-BFGS-B", bounds=bounds,
                             options={"ftol": 1e-13, "gtol": 1e-9, "maxiter": 500})
    # A short derivative-free polish from the L-BFGS-B optimum (finite-difference gradients
    # limit L-BFGS-B's precision to ~1e-6 relative on theta).
    polish = optimize.minimize(objective, best.x, method="Nelder-Mead", bounds=bounds,
                               options={"xatol": 1e-9, "fatol": 1e-10, "maxfev": 600,
                                        "initial_simplex": best.x + np.vstack(
                                            [np.zeros(3), 1e-3 * np.eye(3)])})
    if polish.fun <= best.fun:
        best = polish
    dev, parts = _profiled(best.x, s, reml)
    converged = bool(np.isfinite(dev)) and bool(parts)
    return parts, -0.5 * dev, converged


def _interior(result: object) -> bool:
    cov_re = np.asarray(result.cov_re, dtype=float)  # type: ignore[attr-defined]
    scale = float(result.scale)  # type: ignore[attr-defined]
    d = np.sqrt(np.diag(cov_re))
    if np.min(d) <= 1e-3 * np.sqrt(scale):
        return False
    corr = cov_re[0, 1] / (d[0] * d[1])
    return abs(corr) < 0.999


def fit_mixed_model(data: pl.DataFrame, config: MixedModelConfig) -> MixedModelResult:
    """Fit a random intercept and slope model by REML and return lme4-comparable numbers.

    Parameters
    ----------
    data
        Long frame with the outcome, the fixed-effect columns (numeric), the time column and
        the group column. Rows with a null in any of them are dropped.
    config
        Columns and options; see :class:`MixedModelConfig`.

    Returns
    -------
    MixedModelResult
        With ``message`` ``too_few_groups`` (fewer than 3 groups or no residual df),
        ``singular_fit`` (a random-effect variance estimated at zero), ``not_converged``
        or ``fit_failed`` as coded edge cases.
    """
    terms = ("intercept", *config.fixed)
    cols = list(dict.fromkeys([config.outcome, *config.fixed, config.time, config.group]))
    frame = data.select(cols).drop_nulls()
    n = frame.height
    codes = frame.get_column(config.group).rank("dense").cast(pl.Int64).to_numpy() - 1
    g = int(codes.max()) + 1 if n else 0
    if g < 3 or n <= len(terms) + 4:
        return _empty(config, terms, n, g, "too_few_groups")
    y = frame.get_column(config.outcome).cast(pl.Float64).to_numpy()
    x = np.column_stack(
        [np.ones(n), *(frame.get_column(c).cast(pl.Float64).to_numpy() for c in config.fixed)]
    )
    t = frame.get_column(config.time).cast(pl.Float64).to_numpy()
    z = np.column_stack([np.ones(n), t])
    if config.engine == "profiled":
        return _result_profiled(config, terms, y, x, z, codes, g)
    model = MixedLM(y, x, groups=codes, exog_re=z)
    result = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for method in ("lbfgs", "bfgs", "nm"):
            try:
                fit = model.fit(reml=config.reml, method=method, maxiter=2000)
            except (np.linalg.LinAlgError, ValueError):
                continue
            if fit.converged:
                result = fit
                break
            result = result or fit
        if result is not None and result.converged and _interior(result):
            # L-BFGS stops early (~1e-5 relative on variance components); a BFGS polish
            # from its optimum reaches lme4's optimum to ~1e-6 (checked on sleepstudy).
            try:
                polish = model.fit(
                    reml=config.reml, method="bfgs", start_params=result.params_object,
                    gtol=1e-8, maxiter=200,
                )
                if polish.llf >= result.llf - 1e-9:
                    result = polish
            except (np.linalg.LinAlgError, ValueError):
                pass
    if result is None:
        return _empty(config, terms, n, g, "fit_failed")
    cov_re = np.asarray(result.cov_re, dtype=float)
    scale = float(result.scale)
    message: MixedMessage = "ok" if result.converged else "not_converged"
    if np.min(np.diag(cov_re)) <= 1e-8 * scale:
        message = "singular_fit"
        se = np.asarray(result.bse_fe, dtype=float)
    else:
        cov = lme4_fixed_effect_cov(x, z, codes, cov_re, scale)
        se = np.sqrt(np.diag(cov))
    return MixedModelResult(
        terms=terms,
        estimate=np.asarray(result.fe_params, dtype=float),
        std_error=se,
        df=float(g - len(terms)),
        var_intercept=float(cov_re[0, 0]),
        var_slope=float(cov_re[1, 1]),
        cov_intercept_slope=float(cov_re[0, 1]),
        var_residual=scale,
        log_likelihood=float(result.llf),
        n_obs=n,
        n_groups=g,
        converged=bool(result.converged),
        message=message,
        alpha=config.alpha,
    )


def _result_profiled(
    config: MixedModelConfig,
    terms: tuple[str, ...],
    y: np.ndarray,
    x: np.ndarray,
    z: np.ndarray,
    codes: np.ndarray,
    g: int,
) -> MixedModelResult:
    try:
        parts, llf, converged = _fit_profiled(y, x, z, codes, g, config.reml)
    except np.linalg.LinAlgError:
        return _empty(config, terms, len(y), g, "fit_failed")
    if not converged:
        return _empty(config, terms, len(y), g, "not_converged")
    lam = np.asarray(parts["lam"])
    sigma2 = float(parts["sigma2"])  # type: ignore[arg-type]
    cov_re = sigma2 * lam @ lam.T
    cov_fe = sigma2 * np.linalg.inv(np.asarray(parts["a"]))
    sd = np.sqrt(np.diag(cov_re))
    singular = bool(np.min(sd) <= 1e-4 * np.sqrt(sigma2))
    return MixedModelResult(
        terms=terms,
        estimate=np.asarray(parts["beta"], dtype=float),
        std_error=np.sqrt(np.diag(cov_fe)),
        df=float(g - len(terms)),
        var_intercept=float(cov_re[0, 0]),
        var_slope=float(cov_re[1, 1]),
        cov_intercept_slope=float(cov_re[0, 1]),
        var_residual=sigma2,
        log_likelihood=float(llf),
        n_obs=len(y),
        n_groups=g,
        converged=True,
        message="singular_fit" if singular else "ok",
        alpha=config.alpha,
    )
