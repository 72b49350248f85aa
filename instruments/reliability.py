"""Internal-consistency reliability of instrument scales, per instrument, scale and wave.

Cronbach's alpha (raw and standardised), Guttman's lambda 6 (smc), the average
inter-item correlation, McDonald's omega total from a one-factor minimum-residual
(minres) factor analysis, and per item the corrected item-total correlation (``r.drop``)
and alpha if the item is deleted. Every number is defined as R's ``psych`` package
defines it (``psych::alpha``, ``psych::omega``/``psych::fa``, psych 2.2.9), so that a
result can be checked against R; ``tests/instruments/test_reliability.py`` checks them
on ``psych::bfi`` to 1e-4.

Missing data (``missing`` column of the results):

``pairwise``
    psych's default (``use = "pairwise"``): every covariance uses the participants who
    answered both items, with the means of those participants (R's
    ``cov(x, use = "pairwise.complete.obs")``). Standardised alpha uses ``cov2cor`` of
    that covariance matrix (not the pairwise correlations). Omega uses R's
    ``cor(x, use = "pairwise")``, i.e. per-pair means *and* standard deviations, as
    ``psych::omega`` does. The scale mean/sd summarise each participant's mean of the
    items they answered (psych's ``rowMeans(x, na.rm = TRUE)``), over participants
    who answered at least one item.
``listwise``
    Only participants who answered every item of the scale (complete cases).

The computation is one pivot of the long response table per instrument (waves kept as
rows), then matrix algebra in numpy per wave and scale: no Python loop over
participants.

References
----------
Cronbach LJ (1951). Coefficient alpha and the internal structure of tests.
Psychometrika 16:297-334.
McDonald RP (1999). Test theory: a unified treatment. Mahwah: Erlbaum (omega total).
Guttman L (1945). A basis for analyzing test-retest reliability. Psychometrika 10:255-282.
Revelle W (2022). psych: Procedures for Psychological, Psychometric, and Personality
Research, version 2.2.9 (``alpha``, ``omega``, ``fa(fm = "minres")``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
from scipy import optimize

from instruments.definition import InstrumentSpec

MissingHandling = Literal["pairwise", "listwise"]
ReliabilityCode = Literal[
    "ok",
    "too_few_items",
    "too_few_respondents",
    "zero_variance_item",
    "omega_not_identified",
    "omega_heywood_case",
    "omega_not_converged",
]

#: psych::fa(fm = "minres") bounds each uniqueness below by 0.005 (communality <= 0.995).
MINRES_MIN_UNIQUENESS = 0.005

SCALE_COLUMNS: dict[str, pl.DataType] = {
    "instrument": pl.String(),
    "scale": pl.String(),
    "wave": pl.Int32(),
    "missing": pl.String(),
    "n": pl.Int64(),
    "n_complete": pl.Int64(),
    "n_items": pl.Int32(),
    "alpha": pl.Float64(),
    "std_alpha": pl.Float64(),
    "g6_smc": pl.Float64(),
    "average_r": pl.Float64(),
    "omega": pl.Float64(),
    "mean": pl.Float64(),
    "sd": pl.Float64(),
    "message": pl.String(),
}
ITEM_COLUMNS: dict[str, pl.DataType] = {
    "instrument": pl.String(),
    "scale": pl.String(),
    "wave": pl.Int32(),
    "missing": pl.String(),
    "item": pl.String(),
    "reverse": pl.Boolean(),
    "n": pl.Int64(),
    "mean": pl.Float64(),
    "sd": pl.Float64(),
    "r_drop": pl.Float64(),
    "alpha_if_deleted": pl.Float64(),
    "std_alpha_if_deleted": pl.Float64(),
    "loading": pl.Float64(),
}


@dataclass(frozen=True)
class ReliabilityConfig:
    """Options of :func:`compute_reliability`.

    Parameters
    ----------
    missing
        Missing-data treatments to report; each gives its own row per scale and wave
        (see the module docstring). psych's default is ``pairwise``.
    min_respondents
        Fewer participants than this (answering at least one item for ``pairwise``,
        all items for ``listwise``; and, for ``pairwise``, fewer than this many answering
        any pair of items) give a row with null statistics and message
        ``too_few_respondents``.
    omega
        Compute omega total (a minres factor analysis per scale and wave).
    by_wave
        Report each wave separately (the default); ``False`` pools all waves (each
        participant-wave is then one row of the item matrix).
    """

    missing: Sequence[MissingHandling] = ("pairwise", "listwise")
    min_respondents: int = 10
    omega: bool = True
    by_wave: bool = True

    def __post_init__(self) -> None:
        bad = [m for m in self.missing if m not in ("pairwise", "listwise")]
        if bad or not self.missing:
            raise ValueError(f"missing must be a non-empty subset of pairwise/listwise: {bad}")
        if self.min_respondents < 2:
            raise ValueError("min_respondents must be at least 2")


@dataclass(frozen=True)
class ReliabilityResult:
    """Reliability per instrument, scale, wave and missing-data treatment.

    Attributes
    ----------
    scales
        One row per (instrument, scale, wave, missing); columns as :data:`SCALE_COLUMNS`.
        ``message`` is ``ok`` or ``;``-joined codes of :data:`ReliabilityCode`.
    items
        One row per item of each scale row; columns as :data:`ITEM_COLUMNS`.
    message
        ``ok``, or ``no_data`` when the responses hold no item of any scale.
    """

    scales: pl.DataFrame
    items: pl.DataFrame
    message: str = "ok"
    config: ReliabilityConfig = field(default_factory=ReliabilityConfig)

    def to_frame(self) -> pl.DataFrame:
        """Scale-level table (the ``reliability.parquet`` columns)."""
        return self.scales

    def items_frame(self) -> pl.DataFrame:
        """Item-level table: r.drop, alpha if deleted, item mean/sd, minres loading."""
        return self.items


# --------------------------------------------------------------------------- matrix algebra


def pairwise_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairwise-complete covariance and correlation matrices, as R computes them.

    Parameters
    ----------
    x
        ``n x k`` float array, ``NaN`` = missing.

    Returns
    -------
    cov, cor, n_pair
        ``cov[i, j]``: covariance over the rows observing both items, centred on those
        rows' means, divisor ``n_ij - 1`` (R ``cov(use = "pairwise")``); ``cor[i, j]``:
        the correlation on those rows (per-pair means and standard deviations, R
        ``cor(use = "pairwise")``); ``n_pair``: the ``n_ij``. Entries with fewer than
        two rows are ``NaN``.
    """
    mom = _WaveMoments.of(np.asarray(x, dtype=np.float64))
    return mom.cov, mom.cor, mom.n_pair


def cov_to_cor(c: np.ndarray) -> np.ndarray:
    """R's ``cov2cor``: ``D^-1/2 C D^-1/2`` with ``D = diag(C)``."""
    s = 1.0 / np.sqrt(np.diag(c))
    r = c * s[:, None] * s[None, :]
    np.fill_diagonal(r, 1.0)
    return r


def alpha_statistics(c: np.ndarray) -> dict[str, float | np.ndarray]:
    """Cronbach's alpha and its companions from an item covariance matrix.

    Formulas as ``psych::alpha`` (Revelle 2022), with ``k`` items, ``C`` the covariance
    and ``R = cov2cor(C)``:

    - raw alpha ``k/(k-1) (1 - tr C / sum C)`` (Cronbach 1951);
    - standardised alpha ``k/(k-1) (1 - k / sum R)``;
    - Guttman's lambda 6 ``1 - (k - sum smc) / sum R``, ``smc_i = 1 - 1/(R^-1)_ii``;
    - average inter-item correlation ``(sum R - k) / (k (k-1))``;
    - corrected item-total correlation ``r.drop_i = (sum_j C_ij - C_ii) /
      sqrt(C_ii * sum C[-i, -i])``;
    - alpha (raw and standardised) of the ``k-1`` items without item ``i``.

    Parameters
    ----------
    c
        ``k x k`` item covariance matrix (``k >= 2``), items already reverse keyed.
    """
    k = c.shape[0]
    r = cov_to_cor(c)
    sum_c, sum_r, tr_c = c.sum(), r.sum(), np.trace(c)
    alpha = k / (k - 1) * (1.0 - tr_c / sum_c)
    std_alpha = k / (k - 1) * (1.0 - k / sum_r)
    try:
        smc = 1.0 - 1.0 / np.diag(np.linalg.inv(r))
        g6 = 1.0 - (k - smc.sum()) / sum_r
    except np.linalg.LinAlgError:
        g6 = float("nan")
    average_r = (sum_r - k) / (k * (k - 1))
    col_c, diag_c = c.sum(axis=0), np.diag(c)
    sum_c_drop = sum_c - 2.0 * col_c + diag_c
    r_drop = (col_c - diag_c) / np.sqrt(diag_c * sum_c_drop)
    if k > 2:
        alpha_drop = (k - 1) / (k - 2) * (1.0 - (tr_c - diag_c) / sum_c_drop)
        sum_r_drop = sum_r - 2.0 * r.sum(axis=0) + 1.0
        std_alpha_drop = (k - 1) / (k - 2) * (1.0 - (k - 1) / sum_r_drop)
    else:  # alpha of a single item is undefined
        alpha_drop = np.full(k, np.nan)
        std_alpha_drop = np.full(k, np.nan)
    return {
        "alpha": float(alpha),
        "std_alpha": float(std_alpha),
        "g6_smc": float(g6),
        "average_r": float(average_r),
        "r_drop": r_drop,
        "alpha_if_deleted": alpha_drop,
        "std_alpha_if_deleted": std_alpha_drop,
    }


def fit_minres_one_factor(r: np.ndarray) -> tuple[np.ndarray, str]:
    """One-factor minimum-residual (unweighted least squares) factor analysis.

    Minimises the sum of squared off-diagonal residuals
    ``sum_{i<j} (r_ij - lambda_i lambda_j)^2`` (Harman & Jones 1966), the objective of
    ``psych::fa(fm = "minres")``; psych reaches it through the uniquenesses ``psi`` with
    loadings from the first eigenvector of ``R - diag(psi)``, and at its optimum
    ``lambda_i^2 = 1 - psi_i``, which is what is solved here directly with analytic
    Jacobians. psych bounds ``psi >= 0.005``; loadings are bounded the same way
    (``|lambda| <= sqrt(0.995)``) and reaching the bound is reported as a Heywood case.

    Parameters
    ----------
    r
        ``k x k`` correlation matrix, ``k >= 3`` (with two items the model is not
        identified).

    Returns
    -------
    loadings, code
        Loadings with a positive sum, and ``ok`` / ``omega_heywood_case`` /
        ``omega_not_converged``.
    """
    k = r.shape[0]
    iu = np.triu_indices(k, 1)
    target = r[iu]
    w, v = np.linalg.eigh(r)
    start = v[:, -1] * np.sqrt(max(w[-1] - 1.0, 1e-3) if k > 1 else 1.0)
    bound = np.sqrt(1.0 - MINRES_MIN_UNIQUENESS)
    start = np.clip(start, -0.95 * bound, 0.95 * bound)

    def resid(lam: np.ndarray) -> np.ndarray:
        return lam[iu[0]] * lam[iu[1]] - target

    rows = np.arange(len(target))

    def jac(lam: np.ndarray) -> np.ndarray:
        j = np.zeros((len(target), k))
        j[rows, iu[0]] = lam[iu[1]]
        j[rows, iu[1]] = lam[iu[0]]
        return j

    sol = optimize.least_squares(
        resid, start, jac=jac, bounds=(-bound, bound), xtol=1e-15, ftol=1e-15, gtol=1e-15
    )
    lam = sol.x * (1.0 if sol.x.sum() >= 0 else -1.0)
    if not sol.success:
        return lam, "omega_not_converged"
    if np.any(np.abs(lam) >= bound - 1e-9):
        return lam, "omega_heywood_case"
    return lam, "ok"


def omega_total(r: np.ndarray, loadings: np.ndarray) -> float:
    """McDonald's omega total as ``psych::omega`` reports it for one factor.

    ``omega_t = (sum R - sum(1 - lambda^2)) / sum R``: the share of the variance of the
    unit-weighted sum of standardised items not due to item uniquenesses (McDonald
    1999; Revelle & Zinbarg 2009, Psychometrika 74:145-154).
    """
    total = r.sum()
    return float((total - np.sum(1.0 - loadings**2)) / total)


# --------------------------------------------------------------------------- table plumbing


def _scale_table(scales: pl.DataFrame) -> pl.DataFrame:
    need = {"instrument", "scale", "item", "reverse", "min", "max"}
    missing = need - set(scales.columns)
    if missing:
        raise ValueError(f"scales table lacks columns {sorted(missing)}")
    return scales.select(
        pl.col("instrument").cast(pl.String),
        pl.col("scale").cast(pl.String),
        pl.col("item").cast(pl.String),
        pl.col("reverse").cast(pl.Boolean),
        pl.col("min").cast(pl.Float64),
        pl.col("max").cast(pl.Float64),
    ).unique(subset=["instrument", "scale", "item"], keep="first", maintain_order=True)


def _item_cube(
    responses: pl.DataFrame, items: list[str], by_wave: bool
) -> tuple[list[int | None], np.ndarray]:
    """Every scale item as a ``wave x participant x item`` array (``NaN`` = missing).

    This is the pivot of the long table, done in one pass as a scatter into a numpy
    array with polars computing the codes (participant: categorical; item: enum; wave:
    rank), which is several times faster than ``DataFrame.pivot`` at 10^7 rows. Item ids
    are global (``docs/contracts.md``), so the pass covers all instruments at once. A
    repeated (participant, wave, item) keeps the last row.
    """
    codes = (
        responses.lazy()
        .select(
            pl.col("participant_id").cast(pl.String).cast(pl.Categorical).to_physical().alias("p"),
            pl.col("wave").cast(pl.Int64).alias("w"),
            pl.col("item")
            .cast(pl.String)
            .cast(pl.Enum(items), strict=False)
            .to_physical()
            .alias("i"),
            pl.col("value").cast(pl.Float64).fill_null(np.nan).alias("v"),
        )
        .drop_nulls(["w", "i"])
        .collect()
    )
    if codes.height == 0:
        return [], np.empty((0, 0, len(items)))
    p = codes["p"].to_numpy()
    present = np.zeros(int(p.max()) + 1, dtype=bool)
    present[p] = True
    p = (np.cumsum(present) - 1)[p]  # dense participant codes 0..n-1
    w = codes["w"].to_numpy()
    waves = np.sort(codes["w"].unique().to_numpy())
    if waves[-1] - waves[0] < 100_000:  # lookup table: O(n) instead of a binary search
        lut = np.zeros(int(waves[-1] - waves[0]) + 1, dtype=np.int64)
        lut[waves - waves[0]] = np.arange(len(waves))
        w_idx = lut[w - waves[0]]
    else:
        w_idx = np.searchsorted(waves, w)
    if by_wave:
        labels: list[int | None] = [int(v) for v in waves]
        cube = np.full((len(waves), int(p.max()) + 1, len(items)), np.nan)
        cube[w_idx, p, codes["i"].to_numpy()] = codes["v"].to_numpy()
    else:  # pooled: every participant-wave is its own row
        labels = [None]
        cube = np.full((1, (int(p.max()) + 1) * len(waves), len(items)), np.nan)
        cube[0, p * len(waves) + w_idx, codes["i"].to_numpy()] = codes["v"].to_numpy()
    return labels, cube


def _empty(columns: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=columns)


@dataclass
class _WaveMoments:
    """Pairwise sums of one instrument-wave item matrix (raw items, not reverse keyed)."""

    x0: np.ndarray  # centred values, 0 where missing
    m: np.ndarray  # observed indicator (float)
    centre: np.ndarray
    cov: np.ndarray
    cor: np.ndarray
    n_pair: np.ndarray
    item_mean: np.ndarray  # mean over each item's observed rows

    @classmethod
    def of(cls, x: np.ndarray) -> _WaveMoments:
        m = ~np.isnan(x)
        with np.errstate(invalid="ignore"):
            counts = m.sum(axis=0)
            centre = np.where(counts > 0, np.nansum(x, axis=0) / np.maximum(counts, 1), 0.0)
        x0 = np.where(m, x - centre, 0.0)
        mf = m.astype(np.float64)
        cov, cor, n_pair = _pairwise_from_centred(x0, mf)
        item_mean = np.where(counts > 0, centre, np.nan)
        return cls(x0, mf, centre, cov, cor, n_pair, item_mean)


def _pairwise_from_centred(
    x0: np.ndarray, mf: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = mf.T @ mf
    sx = x0.T @ mf  # sx[i, j] = sum of x_i over rows observing i and j
    sxx = (x0 * x0).T @ mf
    sxy = x0.T @ x0
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = np.where(n > 1, n - 1.0, np.nan)
        cov = (sxy - sx * sx.T / n) / denom
        var_ij = (sxx - sx * sx / n) / denom  # var of item i on the rows observing i and j
        cor = cov / np.sqrt(var_ij * var_ij.T)
    np.fill_diagonal(cor, np.where(np.diag(n) > 1, 1.0, np.nan))
    return cov, cor, n


def _scale_rows(
    instrument: str,
    scale: str,
    wave: int | None,
    mom: _WaveMoments,
    idx: np.ndarray,
    item_ids: list[str],
    reverse: np.ndarray,
    flip: np.ndarray,
    count: np.ndarray,
    summary: dict[str, float],
    config: ReliabilityConfig,
) -> tuple[list[dict], list[dict]]:
    """Rows of the scale and item tables for one scale and wave.

    Reverse keying ``x' = flip - x`` (``flip = min + max``) is applied to the moments:
    covariances and correlations change sign by ``s s^T`` with ``s = -1`` for reversed
    items, means become ``flip - mean``.
    """
    k = len(item_ids)
    sign = np.where(reverse, -1.0, 1.0)
    shift = np.where(reverse, flip, 0.0)
    ss = np.outer(sign, sign)
    centre = shift + sign * mom.centre[idx]  # reverse-keyed item centres
    complete = count == k
    scale_rows: list[dict] = []
    item_rows: list[dict] = []
    for missing in config.missing:
        codes: list[str] = []
        stats: dict = {}
        loadings = np.full(k, np.nan)
        if missing == "pairwise":
            n = int(summary["n_any"])
            cov = ss * mom.cov[np.ix_(idx, idx)]
            cor = ss * mom.cor[np.ix_(idx, idx)]
            n_pair = mom.n_pair[np.ix_(idx, idx)]
            enough = n >= config.min_respondents and n_pair.min() >= config.min_respondents
            score_mean, score_sd = summary["mean_any"], summary["sd_any"]
            item_n = np.diag(n_pair).astype(np.int64)
            item_mean = shift + sign * mom.item_mean[idx]
        else:
            n = int(complete.sum())
            enough = n >= config.min_respondents
            xc = mom.x0[np.ix_(complete, idx)] * sign
            if enough:
                xc_sum = xc.sum(axis=0)
                cov = (xc.T @ xc - np.outer(xc_sum, xc_sum) / n) / (n - 1)
                cor = cov_to_cor(cov) if np.all(np.diag(cov) > 0) else cov
            else:
                cov = cor = np.full((k, k), np.nan)
            score_mean, score_sd = summary["mean_complete"], summary["sd_complete"]
            item_n = np.full(k, n)
            item_mean = centre + xc.mean(axis=0) if n else np.full(k, np.nan)
        with np.errstate(invalid="ignore"):
            item_sd = np.sqrt(np.diag(cov))
        if k < 2:
            codes.append("too_few_items")
        elif not enough:
            codes.append("too_few_respondents")
        elif np.any(~(np.diag(cov) > 0)):
            codes.append("zero_variance_item")
        else:
            stats = alpha_statistics(cov)
        omega = float("nan")
        if stats and config.omega:
            if k < 3 or not np.all(np.isfinite(cor)):
                codes.append("omega_not_identified")
            else:
                loadings, code = fit_minres_one_factor(cor)
                omega = omega_total(cor, loadings)
                if code != "ok":
                    codes.append(code)
        scale_rows.append(
            {
                "instrument": instrument,
                "scale": scale,
                "wave": wave,
                "missing": missing,
                "n": n,
                "n_complete": int(complete.sum()),
                "n_items": k,
                "alpha": stats.get("alpha"),
                "std_alpha": stats.get("std_alpha"),
                "g6_smc": stats.get("g6_smc"),
                "average_r": stats.get("average_r"),
                "omega": _num(omega),
                "mean": _num(score_mean),
                "sd": _num(score_sd),
                "message": ";".join(codes) if codes else "ok",
            }
        )
        nan = np.full(k, np.nan)
        for j, item in enumerate(item_ids):
            item_rows.append(
                {
                    "instrument": instrument,
                    "scale": scale,
                    "wave": wave,
                    "missing": missing,
                    "item": item,
                    "reverse": bool(reverse[j]),
                    "n": int(item_n[j]),
                    "mean": _num(item_mean[j]),
                    "sd": _num(item_sd[j]),
                    "r_drop": _num(stats.get("r_drop", nan)[j]),
                    "alpha_if_deleted": _num(stats.get("alpha_if_deleted", nan)[j]),
                    "std_alpha_if_deleted": _num(stats.get("std_alpha_if_deleted", nan)[j]),
                    "loading": _num(loadings[j]),
                }
            )
    return scale_rows, item_rows


def _score_summaries(
    counts: np.ndarray, row_sums: np.ndarray, n_items: np.ndarray
) -> list[dict[str, float]]:
    """Mean and sd of the person-level item mean, all scales of one wave at once.

    ``any``: participants answering at least one item (psych's ``rowMeans(x, na.rm =
    TRUE)``, the pairwise row); ``complete``: those answering all items (listwise).
    """
    out = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for mask_name, mask in (("any", counts > 0), ("complete", counts == n_items)):
            pm = np.where(mask, row_sums / np.where(mask, counts, 1.0), 0.0)
            n = mask.sum(axis=0).astype(np.float64)
            mean = pm.sum(axis=0) / n
            sd = np.sqrt((((pm - mean) * mask) ** 2).sum(axis=0) / (n - 1.0))
            out.append((mask_name, n, mean, sd))
    return [
        {
            f"{stat}_{name}": float(v[s])
            for name, n, mean, sd in out
            for stat, v in (("n", n), ("mean", mean), ("sd", sd))
        }
        for s in range(counts.shape[1])
    ]


def _num(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def scale_items_table(library: Iterable[InstrumentSpec]) -> pl.DataFrame:
    """The ``scales`` argument of :func:`compute_reliability` from instrument definitions.

    Parameters
    ----------
    library
        An :class:`~instruments.definition.InstrumentLibrary` (or any iterable of
        :class:`~instruments.definition.InstrumentSpec`).

    Returns
    -------
    pl.DataFrame
        One row per (instrument, scale, item): ``instrument, scale, item, reverse, min,
        max`` with the item's own response range (``InstrumentSpec.item_range``).
    """
    rows = [
        (inst.id, sc.id, it, inst.item(it).reverse, *inst.item_range(it))
        for inst in library
        for sc in inst.scales
        for it in sc.items
    ]
    return pl.DataFrame(
        rows,
        schema={
            "instrument": pl.String(),
            "scale": pl.String(),
            "item": pl.String(),
            "reverse": pl.Boolean(),
            "min": pl.Int64(),
            "max": pl.Int64(),
        },
        orient="row",
    )


def compute_reliability(
    responses: pl.DataFrame,
    scales: pl.DataFrame,
    config: ReliabilityConfig | None = None,
) -> ReliabilityResult:
    """Reliability of every scale, per wave, from the long response table.

    Parameters
    ----------
    responses
        Long table ``participant_id, wave, instrument, item, value`` (value null =
        skipped item). A participant-wave with several rows for one item uses the first.
    scales
        One row per scale item: ``instrument, scale, item, reverse, min, max``; reverse
        keyed items are rescored ``min + max - x`` on the item's own range before any
        statistic (``instruments/definition.py`` convention; bfi: ``7 - x``).
    config
        :class:`ReliabilityConfig`; default: both missing-data treatments, omega on.

    Returns
    -------
    ReliabilityResult
        ``to_frame()``: instrument, scale, wave, missing, n, n_complete, n_items, alpha,
        std_alpha, g6_smc, average_r, omega, mean, sd (of the person-level item mean, the
        scale score psych reports), message. ``items_frame()``: per item r_drop,
        alpha_if_deleted (raw), std_alpha_if_deleted, mean, sd, loading.

    Notes
    -----
    Expected edge cases come back as coded messages on the row, never as exceptions:
    ``too_few_items`` (one item), ``too_few_respondents``, ``zero_variance_item``,
    ``omega_not_identified`` (two-item scales: one factor is not identified from one
    correlation), ``omega_heywood_case``, ``omega_not_converged``.

    Examples
    --------
    >>> import polars as pl
    >>> resp = pl.DataFrame({
    ...     "participant_id": [str(i) for i in range(4) for _ in range(3)],
    ...     "wave": [0] * 12, "instrument": ["x"] * 12,
    ...     "item": ["x_1", "x_2", "x_3"] * 4,
    ...     "value": [1, 2, 1, 2, 2, 3, 3, 4, 3, 4, 5, 5]})
    >>> sc = pl.DataFrame({"instrument": ["x"] * 3, "scale": ["total"] * 3,
    ...     "item": ["x_1", "x_2", "x_3"], "reverse": [False] * 3, "min": [1] * 3,
    ...     "max": [5] * 3})
    >>> res = compute_reliability(resp, sc, ReliabilityConfig(min_respondents=3, omega=False))
    >>> round(res.to_frame()["alpha"][0], 4)  # 3/2 * (1 - (5/3 + 9/4 + 8/3) / 18.25)
    0.9589
    """
    config = config or ReliabilityConfig()
    need = {"participant_id", "wave", "instrument", "item", "value"}
    missing_cols = need - set(responses.columns)
    if missing_cols:
        raise ValueError(f"responses table lacks columns {sorted(missing_cols)}")
    table = _scale_table(scales)
    scale_rows: list[dict] = []
    item_rows: list[dict] = []
    # items grouped by instrument, so that an instrument's columns are a view of the cube
    per_inst = table.select("instrument", "item").unique(maintain_order=True)
    dup = per_inst.filter(pl.col("item").is_duplicated())["item"].unique().to_list()
    if dup:
        raise ValueError(f"items {dup} belong to more than one instrument (ids are global)")
    all_items = per_inst.sort("instrument", maintain_order=True)["item"].to_list()
    waves, cube = _item_cube(responses, all_items, config.by_wave)
    col = {it: j for j, it in enumerate(all_items)}
    for (instrument,), inst_scales in table.group_by(["instrument"], maintain_order=True):
        inst_items = np.sort([col[it] for it in inst_scales["item"].unique(maintain_order=True)])
        inst_col = {all_items[c]: j for j, c in enumerate(inst_items)}
        groups = [
            (
                str(scale),
                np.array([inst_col[it] for it in sc["item"]]),
                sc["item"].to_list(),
                sc["reverse"].to_numpy(),
                (sc["min"] + sc["max"]).to_numpy(),
            )
            for (scale,), sc in inst_scales.group_by(["scale"], maintain_order=True)
        ]
        n_inst = len(inst_items)
        member = np.zeros((n_inst, len(groups)))
        rev_all = np.zeros((n_inst, len(groups)), dtype=bool)
        flip_all = np.zeros((n_inst, len(groups)))
        for s, (_, idx, _, rev, flip) in enumerate(groups):
            member[idx, s] = 1.0
            rev_all[idx, s] = rev
            flip_all[idx, s] = flip
        sign_all = np.where(rev_all, -1.0, 1.0)
        for j, wave in enumerate(waves):
            # a view; rows of participants absent this wave are all NaN and contribute
            # nothing (every statistic counts only observed values)
            x = cube[j][:, inst_items[0] : inst_items[-1] + 1]
            if np.isnan(x).all():
                continue
            mom = _WaveMoments.of(x)
            # answered items and reverse-keyed item sums per participant, all scales at once
            # (A^T X^T)^T rather than X A: OpenBLAS threads tall-skinny products badly
            counts = (member.T @ mom.m.T).T
            centres = np.where(rev_all, flip_all - mom.centre[:, None], mom.centre[:, None])
            row_sums = ((member * sign_all).T @ mom.x0.T + (member * centres).T @ mom.m.T).T
            summaries = _score_summaries(counts, row_sums, member.sum(axis=0))
            for s, (scale, idx, ids, rev, flip) in enumerate(groups):
                s_rows, i_rows = _scale_rows(
                    str(instrument),
                    scale,
                    wave,
                    mom,
                    idx,
                    ids,
                    rev,
                    flip,
                    counts[:, s],
                    summaries[s],
                    config,
                )
                scale_rows.extend(s_rows)
                item_rows.extend(i_rows)
    if not scale_rows:
        return ReliabilityResult(_empty(SCALE_COLUMNS), _empty(ITEM_COLUMNS), "no_data", config)
    return ReliabilityResult(
        pl.DataFrame(scale_rows, schema=SCALE_COLUMNS),
        pl.DataFrame(item_rows, schema=ITEM_COLUMNS),
        "ok",
        config,
    )
