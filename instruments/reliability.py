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

The computation is one pivot of the long response table into a wave x participant x
item array, then, per instrument and wave, sums of products accumulated over chunks of
participants (BLAS matrix products; participants who answered every item enter only
through their sums and cross products), from which every scale's statistics follow: no
Python loop over participants.

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
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
from scipy import optimize
from threadpoolctl import threadpool_limits

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
    x = np.asarray(x, dtype=np.float64)
    observed = ~np.isnan(x)
    counts = observed.sum(axis=0)
    shift = np.where(observed, x, 0.0).sum(axis=0) / np.maximum(counts, 1)
    cov, cor, n_pair, _ = _BlockSums.of(x, shift, ()).pairwise()
    return cov, cor, n_pair


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

#: Rows of an item matrix handled at once, so that a chunk's working arrays stay in cache.
_CHUNK_ROWS = 16_384

#: Response dtypes that float32 holds exactly: the item cube is then half the size.
_SMALL_INTEGERS = (pl.Boolean, pl.Int8, pl.UInt8, pl.Int16, pl.UInt16)


def _one_blas_thread() -> AbstractContextManager[object]:
    """BLAS (numpy's and scipy's) on one thread while the context lasts.

    Every product here is tall and skinny (a chunk of participants by a few items) or
    tiny (the minres fit): threads gain nothing on them, and OpenBLAS's spin-waiting
    threads stall when another process holds a core (measured on two cores with one
    busy: the chunk sums 3x and the omega fits 2x slower than on one thread).
    """
    return threadpool_limits(limits=1, user_api="blas")


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
    """Every scale item as a ``block x row x column`` array (``NaN`` = missing).

    Blocks are the waves (one pooled block when ``by_wave`` is false), rows the
    participants (pooled: participant-waves), columns ``items`` in order plus a last
    column that takes the responses to items of no scale. Item ids are global
    (``docs/contracts.md``), so one pass covers all instruments.

    The pivot is one scatter into a numpy array. The row of a long row comes from runs
    (:func:`_participant_wave_runs`), which spares hashing every participant id; the
    column is an enum cast of the item. Values are float32 when the response dtype is a
    small integer (exact), float64 otherwise. Validated responses hold one row per
    participant, wave and item (``duplicate_row``); should a table repeat one, one of its
    values is used.
    """
    k = len(items)
    resp = responses.select("participant_id", "wave", "item", "value")
    if resp["participant_id"].null_count() or resp["wave"].null_count():
        resp = resp.drop_nulls(["participant_id", "wave"])
    if resp.height == 0:
        return [], np.empty((0, 0, k + 1))
    small = resp.schema["value"] in _SMALL_INTEGERS
    coding = resp.lazy().select(
        pl.col("item")
        .cast(pl.String)
        .cast(pl.Enum(items), strict=False)
        .to_physical()
        .fill_null(k),  # items of no scale: the last column (the enum's codes hold k)
        pl.col("value").cast(pl.Float32 if small else pl.Float64).fill_null(np.nan),
    )
    columns = coding.collect()
    starts, person, wave = _participant_wave_runs(resp)
    waves, wave_index = _dense_values(wave)
    n_people, n_waves = int(person.max()) + 1, len(waves)
    unit = wave_index * n_people + person if by_wave else person * n_waves + wave_index
    flat = np.repeat(unit * (k + 1), np.diff(np.append(starts, resp.height)))
    flat += columns["item"].to_numpy()
    cube = np.full(n_waves * n_people * (k + 1), np.nan, dtype=np.float32 if small else np.float64)
    cube[flat] = columns["value"].to_numpy()
    if by_wave:
        return [int(w) for w in waves], cube.reshape(n_waves, n_people, k + 1)
    return [None], cube.reshape(1, n_waves * n_people, k + 1)


def _participant_wave_runs(resp: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of consecutive long rows of one participant and wave (a survey row's items).

    Returns the first row of each run, its participant's code (``0..n-1``) and its wave.
    Runs are found by comparing neighbouring rows, not by hashing; only the first row of
    each run of one participant has its id hashed (a categorical code), so that a
    participant whose rows are not adjacent still gets one code. Rows in no such order
    (most runs one row long) are coded one by one.
    """
    pid, wave = pl.col("participant_id"), pl.col("wave")
    starts = resp.select(pl.arg_where(pid.ne_missing(pid.shift()) | wave.ne_missing(wave.shift())))
    if starts.height > resp.height // 2:
        ids, first = resp["participant_id"].cast(pl.String), None
        starts, waves = np.arange(resp.height), resp["wave"].to_numpy()
    else:
        at = starts.to_series()
        heads = resp.select(pid.gather(at).cast(pl.String), wave.gather(at))
        first = heads.select(pid.ne_missing(pid.shift())).to_series()
        ids, starts, waves = heads["participant_id"].filter(first), at.to_numpy(), heads["wave"].to_numpy()
    codes = ids.cast(pl.Categorical).to_physical().to_numpy()
    seen = np.zeros(int(codes.max()) + 1, dtype=bool)
    seen[codes] = True
    person = (np.cumsum(seen) - 1)[codes]
    if first is not None:  # from participant runs to (participant, wave) runs
        person = person[np.cumsum(first.to_numpy()) - 1]
    return starts, person, waves.astype(np.int64)


def _dense_values(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct integers of ``v`` and each element's index among them."""
    lo, hi = int(v.min()), int(v.max())
    if hi - lo >= 1_000_000:
        return np.unique(v, return_inverse=True)
    seen = np.zeros(hi - lo + 1, dtype=bool)  # lookup table: O(n) instead of a sort
    seen[v - lo] = True
    return np.flatnonzero(seen) + lo, (np.cumsum(seen) - 1)[v - lo]


def _empty(columns: dict[str, pl.DataType]) -> pl.DataFrame:
    return pl.DataFrame(schema=columns)


@dataclass(frozen=True)
class _Scale:
    """One scale of an instrument's item block.

    The block holds ``x' = x - shift`` per item (``shift``: the middle of the item's
    range, so that the sums below are sums of small numbers); the keyed item is
    ``offset + sign * x'``: ``sign = -1`` for reverse-keyed items (``min + max - x``).
    """

    name: str
    items: list[str]
    idx: np.ndarray  # columns of the block
    reverse: np.ndarray
    sign: np.ndarray
    offset: np.ndarray

    @classmethod
    def of(cls, name: str, rows: pl.DataFrame, column: dict[str, int], shift: np.ndarray) -> _Scale:
        """The scale of ``rows`` (its rows of the scale table)."""
        items = rows["item"].to_list()
        idx = np.array([column[it] for it in items])
        reverse = rows["reverse"].to_numpy()
        flip = (rows["min"] + rows["max"]).to_numpy()
        offset = np.where(reverse, flip - shift[idx], shift[idx])
        return cls(name, items, idx, reverse, np.where(reverse, -1.0, 1.0), offset)


class _BlockSums:
    """Sufficient statistics of one instrument's ``n x k`` item matrix, summed by chunks.

    Rows that answer every item ("full" rows, most of them) enter only through their
    count ``n_full``, sum ``s_full`` and cross products ``p_full`` of ``x'``. The rows
    with a missing item are few, and only they carry the observed-indicator products
    that pairwise deletion and per-scale counts need; with ``X`` their ``x'`` (0 where
    missing) and ``M`` their observed indicator: ``mm = M^T M``, ``xm = X^T M``,
    ``x2m = (X*X)^T M``, ``pp = X^T X``. Per scale, over those rows: ``any_*`` (rows
    answering at least one item: count, sum and sum of squares of the item mean less
    the scale's mean offset) and ``all_*`` (rows answering every item of the scale:
    count, sums and cross products of its items). Rows answering nothing (participants
    absent from a wave) count nowhere.
    """

    def __init__(self, k: int, scales: Sequence[_Scale]) -> None:
        self.scales = scales
        self.n_full = 0
        self.s_full = np.zeros(k)
        self.p_full = np.zeros((k, k))
        self.mm, self.xm, self.x2m, self.pp = (np.zeros((k, k)) for _ in range(4))
        member, sign, offset = (np.zeros((k, len(scales))) for _ in range(3))
        for j, sc in enumerate(scales):
            member[sc.idx, j] = 1.0
            sign[sc.idx, j] = sc.sign
            offset[sc.idx, j] = sc.offset - sc.offset.mean()
        self._member, self._sign, self._offset = member, sign, offset
        self._size = member.sum(axis=0)
        self.any_n, self.any_q, self.any_q2, self.all_n = (np.zeros(len(scales)) for _ in range(4))
        self.all_s = [np.zeros(len(sc.idx)) for sc in scales]
        self.all_p = [np.zeros((len(sc.idx), len(sc.idx))) for sc in scales]

    @classmethod
    def of(cls, x: np.ndarray, shift: np.ndarray, scales: Sequence[_Scale]) -> _BlockSums:
        """Sums of ``x`` (``n x k``, ``NaN`` = missing, any float dtype) less ``shift``."""
        n, k = x.shape
        sums = cls(k, scales)
        chunk = np.empty((min(n, _CHUNK_ROWS), k))
        ones_k, ones_n = np.ones(k), np.ones(len(chunk))
        with_gaps: list[np.ndarray] = []  # gathered until they fill a chunk
        for start in range(0, n, _CHUNK_ROWS):
            xc = chunk[: min(_CHUNK_ROWS, n - start)]
            np.copyto(xc, x[start : start + len(xc)])
            xc -= shift
            gaps = np.flatnonzero(np.isnan(xc @ ones_k))  # NaN propagates through the sum
            if gaps.size:
                with_gaps.append(xc[gaps])
                xc[gaps] = 0.0
                if sum(map(len, with_gaps)) >= _CHUNK_ROWS or start + _CHUNK_ROWS >= n:
                    sums._add_rows_with_gaps(np.concatenate(with_gaps))
                    with_gaps.clear()
            sums.n_full += len(xc) - gaps.size
            sums.s_full += ones_n[: len(xc)] @ xc
            sums.p_full += xc.T @ xc
        if with_gaps:
            sums._add_rows_with_gaps(np.concatenate(with_gaps))
        return sums

    def _add_rows_with_gaps(self, x: np.ndarray) -> None:
        gap = np.isnan(x)
        x[gap] = 0.0
        m = np.logical_not(gap).astype(np.float64)
        self.mm += m.T @ m
        self.xm += x.T @ m
        self.x2m += (x * x).T @ m
        self.pp += x.T @ x
        if not self.scales:
            return
        answered = m @ self._member
        some = answered > 0
        q = np.divide(x @ self._sign + m @ self._offset, answered, out=np.zeros_like(answered), where=some)
        self.any_n += some.sum(axis=0)
        self.any_q += q.sum(axis=0)
        self.any_q2 += (q * q).sum(axis=0)
        every = answered == self._size
        for j, sc in enumerate(self.scales):
            rows = np.flatnonzero(every[:, j])
            if rows.size:
                xs = x[np.ix_(rows, sc.idx)]
                self.all_n[j] += rows.size
                self.all_s[j] += xs.sum(axis=0)
                self.all_p[j] += xs.T @ xs

    def observed(self) -> bool:
        """Whether the block holds any answer."""
        return self.n_full > 0 or np.trace(self.mm) > 0

    def pairwise(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Pairwise-complete ``cov, cor, n_pair`` (see :func:`pairwise_moments`) and item means of ``x'``."""
        n = self.n_full + self.mm
        sx = self.s_full[:, None] + self.xm  # sx[i, j]: sum of x'_i over rows observing i and j
        sxx = np.diag(self.p_full)[:, None] + self.x2m
        sxy = self.p_full + self.pp
        with np.errstate(divide="ignore", invalid="ignore"):
            denom = np.where(n > 1, n - 1.0, np.nan)
            cov = (sxy - sx * sx.T / n) / denom
            var = (sxx - sx * sx / n) / denom  # var of item i on the rows observing i and j
            cor = cov / np.sqrt(var * var.T)
            mean = np.diag(sx) / np.diag(n)
        np.fill_diagonal(cor, np.where(np.diag(n) > 1, 1.0, np.nan))
        return cov, cor, n, mean

    def person_means(self, j: int) -> tuple[int, float, float]:
        """Count, mean and sd of the participant's mean of the scale items answered.

        A full row's item mean less the mean offset is ``sign . x' / k``, so those rows
        enter through ``s_full`` and ``p_full``.
        """
        sc = self.scales[j]
        k = len(sc.idx)
        n = self.n_full + self.any_n[j]
        q = self.any_q[j] + sc.sign @ self.s_full[sc.idx] / k
        q2 = self.any_q2[j] + sc.sign @ self.p_full[np.ix_(sc.idx, sc.idx)] @ sc.sign / k**2
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = sc.offset.mean() + q / n
            sd = np.sqrt(np.maximum((q2 - q * q / n) / (n - 1.0), 0.0))
        return int(n), float(mean), float(sd)

    def complete_cases(self, j: int) -> tuple[int, np.ndarray, np.ndarray]:
        """Count, item means and covariance of ``x'`` over the rows answering every item."""
        sc = self.scales[j]
        n = self.n_full + int(self.all_n[j])
        s = self.s_full[sc.idx] + self.all_s[j]
        p = self.p_full[np.ix_(sc.idx, sc.idx)] + self.all_p[j]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = s / n
        cov = (p - np.outer(s, s) / n) / (n - 1) if n > 1 else np.full(p.shape, np.nan)
        return n, mean, cov


def _scale_rows(
    instrument: str,
    wave: int | None,
    sums: _BlockSums,
    pairwise: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    j: int,
    config: ReliabilityConfig,
) -> tuple[list[dict], list[dict]]:
    """Rows of the scale and item tables for scale ``j`` of ``sums``'s block.

    Reverse keying ``x' -> offset - x'`` is applied to the moments: covariances and
    correlations change sign by ``s s^T`` with ``s = -1`` for reversed items.
    """
    sc = sums.scales[j]
    k = len(sc.items)
    ix = np.ix_(sc.idx, sc.idx)
    ss = np.outer(sc.sign, sc.sign)
    n_complete, cc_mean, cc_cov = sums.complete_cases(j)
    scale_rows: list[dict] = []
    item_rows: list[dict] = []
    for missing in config.missing:
        codes: list[str] = []
        stats: dict = {}
        loadings = np.full(k, np.nan)
        if missing == "pairwise":
            pw_cov, pw_cor, pw_n, pw_mean = pairwise
            n, score_mean, score_sd = sums.person_means(j)
            cov, cor, n_pair = ss * pw_cov[ix], ss * pw_cor[ix], pw_n[ix]
            enough = n >= config.min_respondents and n_pair.min() >= config.min_respondents
            item_n = np.diag(n_pair).astype(np.int64)
            item_mean = sc.offset + sc.sign * pw_mean[sc.idx]
        else:
            n = n_complete
            enough = n >= config.min_respondents
            keyed = ss * cc_cov
            if enough:
                cov = keyed
                cor = cov_to_cor(cov) if np.all(np.diag(cov) > 0) else cov
            else:
                cov = cor = np.full((k, k), np.nan)
            # the complete cases' item mean is the mean of the k keyed items
            item_n = np.full(k, n)
            item_mean = sc.offset + sc.sign * cc_mean
            score_mean = float(item_mean.mean())
            score_sd = float(np.sqrt(np.maximum(keyed.sum(), 0.0)) / k)
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
                "scale": sc.name,
                "wave": wave,
                "missing": missing,
                "n": n,
                "n_complete": n_complete,
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
        for i, item in enumerate(sc.items):
            item_rows.append(
                {
                    "instrument": instrument,
                    "scale": sc.name,
                    "wave": wave,
                    "missing": missing,
                    "item": item,
                    "reverse": bool(sc.reverse[i]),
                    "n": int(item_n[i]),
                    "mean": _num(item_mean[i]),
                    "sd": _num(item_sd[i]),
                    "r_drop": _num(stats.get("r_drop", nan)[i]),
                    "alpha_if_deleted": _num(stats.get("alpha_if_deleted", nan)[i]),
                    "std_alpha_if_deleted": _num(stats.get("std_alpha_if_deleted", nan)[i]),
                    "loading": _num(loadings[i]),
                }
            )
    return scale_rows, item_rows


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
        skipped item), one row per participant, wave and item as validation leaves it
        (should an item repeat, one of its values is used). Row order does not matter;
        the rows of one participant and wave being adjacent (as read) makes it faster.
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
    # items grouped by instrument, so that an instrument's items are adjacent cube columns
    per_inst = table.select("instrument", "item").unique(maintain_order=True)
    dup = per_inst.filter(pl.col("item").is_duplicated())["item"].unique().to_list()
    if dup:
        raise ValueError(f"items {dup} belong to more than one instrument (ids are global)")
    all_items = per_inst.sort("instrument", maintain_order=True)["item"].to_list()
    waves, cube = _item_cube(responses, all_items, config.by_wave)
    with _one_blas_thread():
        scale_rows, item_rows = _reliability_rows(table, all_items, waves, cube, config)
    if not scale_rows:
        return ReliabilityResult(_empty(SCALE_COLUMNS), _empty(ITEM_COLUMNS), "no_data", config)
    return ReliabilityResult(
        pl.DataFrame(scale_rows, schema=SCALE_COLUMNS),
        pl.DataFrame(item_rows, schema=ITEM_COLUMNS),
        "ok",
        config,
    )


def _reliability_rows(
    table: pl.DataFrame,
    all_items: list[str],
    waves: list[int | None],
    cube: np.ndarray,
    config: ReliabilityConfig,
) -> tuple[list[dict], list[dict]]:
    """Scale and item rows of every instrument, scale and wave block of ``cube``."""
    scale_rows: list[dict] = []
    item_rows: list[dict] = []
    col = {it: j for j, it in enumerate(all_items)}
    for (instrument,), inst_scales in table.group_by(["instrument"], maintain_order=True):
        first = inst_scales.unique("item", keep="first", maintain_order=True)
        lo = min(col[it] for it in first["item"])
        column = {it: col[it] - lo for it in first["item"]}
        # shift: the middle of each item's range (0 where the table gives none)
        mid = ((first["min"] + first["max"]) / 2).fill_null(np.nan).to_numpy()
        shift = np.zeros(len(column))
        shift[[column[it] for it in first["item"]]] = np.where(np.isfinite(mid), mid, 0.0)
        groups = [
            _Scale.of(str(scale), sc, column, shift)
            for (scale,), sc in inst_scales.group_by(["scale"], maintain_order=True)
        ]
        for j, wave in enumerate(waves):
            # rows of participants absent this wave are all NaN and count nowhere
            sums = _BlockSums.of(cube[j, :, lo : lo + len(column)], shift, groups)
            if not sums.observed():
                continue
            pairwise = sums.pairwise()
            for s in range(len(groups)):
                s_rows, i_rows = _scale_rows(str(instrument), wave, sums, pairwise, s, config)
                scale_rows.extend(s_rows)
                item_rows.extend(i_rows)
    return scale_rows, item_rows
