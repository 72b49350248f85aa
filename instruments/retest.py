"""Test-retest reliability: intraclass correlations between consecutive waves, per scale.

For each instrument scale and each pair of consecutive waves ``(w, w')`` present in the
scores table, the participants scored at both waves form an ``n x 2`` matrix (targets x
occasions) and a two-way ANOVA gives the mean squares for participants (``MSR``), waves
(``MSC``) and error (``MSE``). Reported, with F-based confidence intervals:

``icc2_1``
    ICC(2,1), two-way random effects, absolute agreement, single measurement (Shrout &
    Fleiss 1979; McGraw & Wong 1996 "ICC(A,1)"): a systematic change between waves
    lowers it. ``(MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n)``; confidence
    limits from Satterthwaite's approximate F (McGraw & Wong 1996, Table 7).
``icc3_1``
    ICC(3,1), two-way mixed effects, consistency, single measurement (McGraw & Wong
    "ICC(C,1)"): insensitive to a shift common to everyone. ``(MSR - MSE) / (MSR + (k-1)
    MSE)``; exact F limits ``F_L = F / F_{1-a/2}(n-1, (n-1)(k-1))``, ``F_U = F
    F_{1-a/2}((n-1)(k-1), n-1)``, ``(F_L - 1) / (F_L + k - 1)``.

Definitions and confidence limits follow ``psych::ICC(lmer = FALSE)`` (psych 2.2.9), the
reference used in ``tests/instruments/test_retest.py``. Participants missing a score at
either wave of a pair are left out of that pair (complete pairs).

References
----------
Shrout PE, Fleiss JL (1979). Intraclass correlations: uses in assessing rater
reliability. Psychol Bull 86:420-428.
McGraw KO, Wong SP (1996). Forming inferences about some intraclass correlation
coefficients. Psychol Methods 1:30-46.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import polars as pl
from scipy import stats

IccType = Literal["icc2_1", "icc3_1"]
WavePairing = Literal["consecutive", "baseline"]
RetestCode = Literal["ok", "too_few_participants", "zero_variance", "no_error_variance"]

RETEST_COLUMNS: dict[str, pl.DataType] = {
    "instrument": pl.String(),
    "scale": pl.String(),
    "wave_from": pl.Int32(),
    "wave_to": pl.Int32(),
    "icc_type": pl.String(),
    "n": pl.Int64(),
    "icc": pl.Float64(),
    "ci_low": pl.Float64(),
    "ci_high": pl.Float64(),
    "f": pl.Float64(),
    "df1": pl.Float64(),
    "df2": pl.Float64(),
    "p_value": pl.Float64(),
    "ms_participants": pl.Float64(),
    "ms_waves": pl.Float64(),
    "ms_error": pl.Float64(),
    "message": pl.String(),
}


@dataclass(frozen=True)
class RetestConfig:
    """Options of :func:`compute_retest`.

    Parameters
    ----------
    alpha
        Confidence intervals have coverage ``1 - alpha`` (two-sided, ``alpha/2`` per
        tail, as ``psych::ICC``).
    min_participants
        A wave pair with fewer complete participants than this returns null ICCs and
        the message ``too_few_participants`` (at least 2 are needed for the ANOVA).
    pairing
        ``consecutive``: each wave with the next wave present for that scale;
        ``baseline``: the first wave with every later wave.
    """

    alpha: float = 0.05
    min_participants: int = 10
    pairing: WavePairing = "consecutive"

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ValueError("alpha must lie in (0, 1)")
        if self.min_participants < 2:
            raise ValueError("min_participants must be at least 2")
        if self.pairing not in ("consecutive", "baseline"):
            raise ValueError(f"unknown pairing {self.pairing!r}")


@dataclass(frozen=True)
class RetestResult:
    """ICC(2,1) and ICC(3,1) per instrument, scale and wave pair (tidy: one row per type)."""

    table: pl.DataFrame
    config: RetestConfig = field(default_factory=RetestConfig)
    message: str = "ok"

    def to_frame(self) -> pl.DataFrame:
        """Columns as :data:`RETEST_COLUMNS`."""
        return self.table


def icc_from_mean_squares(
    msr: np.ndarray,
    msc: np.ndarray,
    mse: np.ndarray,
    n: np.ndarray,
    k: np.ndarray | int,
    alpha: float = 0.05,
) -> dict[str, np.ndarray]:
    """ICC(2,1) and ICC(3,1) with confidence limits from two-way ANOVA mean squares.

    Vectorised over arrays of groups. Formulas of Shrout & Fleiss (1979) and McGraw &
    Wong (1996), written as ``psych::ICC`` computes them (see the module docstring).

    Parameters
    ----------
    msr, msc, mse
        Mean squares of targets (participants; ``n - 1`` df), occasions/raters
        (``k - 1`` df) and residual (``(n-1)(k-1)`` df).
    n, k
        Number of targets and of occasions.
    alpha
        ``1 - alpha`` two-sided confidence intervals.

    Returns
    -------
    dict
        ``icc2``, ``icc2_low``, ``icc2_high``, ``icc3``, ``icc3_low``, ``icc3_high``,
        ``f`` (``MSR/MSE``), ``df1``, ``df2``, ``p`` (upper tail of F).

    Examples
    --------
    Shrout & Fleiss (1979), Table 2 (6 targets, 4 judges):

    >>> x = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6],
    ...               [10, 5, 6, 9], [6, 2, 4, 7]], dtype=float)
    >>> r = icc_from_mean_squares(*two_way_mean_squares(x), n=6, k=4)
    >>> round(float(r["icc2"]), 2), round(float(r["icc3"]), 2)
    (0.29, 0.71)
    """
    msr, msc, mse = (np.asarray(v, dtype=np.float64) for v in (msr, msc, mse))
    n = np.asarray(n, dtype=np.float64)
    k = np.asarray(k, dtype=np.float64)
    q = 1.0 - alpha / 2.0
    df1 = n - 1.0
    df2 = (n - 1.0) * (k - 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        icc2 = (msr - mse) / (msr + (k - 1.0) * mse + k * (msc - mse) / n)
        icc3 = (msr - mse) / (msr + (k - 1.0) * mse)
        f = msr / mse
        p = stats.f.sf(f, df1, df2)
        f_low = f / stats.f.ppf(q, df1, df2)
        f_high = f * stats.f.ppf(q, df2, df1)
        icc3_low = (f_low - 1.0) / (f_low + k - 1.0)
        icc3_high = (f_high - 1.0) / (f_high + k - 1.0)
        fj = msc / mse
        a = n * (1.0 + (k - 1.0) * icc2) - k * icc2
        vn = (k - 1.0) * (n - 1.0) * (k * icc2 * fj + a) ** 2
        vd = (n - 1.0) * k**2 * icc2**2 * fj**2 + a**2
        v = vn / vd
        fu = stats.f.ppf(q, n - 1.0, v)
        fl = stats.f.ppf(q, v, n - 1.0)
        c = k * msc + (k * n - k - n) * mse
        icc2_low = n * (msr - fu * mse) / (fu * c + n * msr)
        icc2_high = n * (fl * msr - mse) / (c + n * fl * msr)
    return {
        "icc2": icc2,
        "icc2_low": icc2_low,
        "icc2_high": icc2_high,
        "icc3": icc3,
        "icc3_low": icc3_low,
        "icc3_high": icc3_high,
        "f": f,
        "df1": df1,
        "df2": df2,
        "p": p,
    }


def two_way_mean_squares(x: np.ndarray) -> tuple[float, float, float]:
    """``(MSR, MSC, MSE)`` of a complete ``n x k`` targets-by-occasions matrix.

    Two-way ANOVA without replication (Shrout & Fleiss 1979, Table 1).
    """
    x = np.asarray(x, dtype=np.float64)
    n, k = x.shape
    g = x.mean()
    ssr = k * np.sum((x.mean(axis=1) - g) ** 2)
    ssc = n * np.sum((x.mean(axis=0) - g) ** 2)
    sse = np.sum((x - g) ** 2) - ssr - ssc
    return ssr / (n - 1), ssc / (k - 1), sse / ((n - 1) * (k - 1))


def _wave_pairs(scores: pl.DataFrame, pairing: WavePairing) -> pl.DataFrame:
    keys = ["instrument", "scale"]
    waves = scores.select(*keys, "wave").unique().sort([*keys, "wave"])
    if pairing == "consecutive":
        return waves.with_columns(pl.col("wave").shift(-1).over(keys).alias("wave_to")).drop_nulls(
            "wave_to"
        )
    first = waves.group_by(keys).agg(pl.col("wave").min().alias("wave_from"))
    return (
        waves.join(first, on=keys)
        .filter(pl.col("wave") > pl.col("wave_from"))
        .select(*keys, pl.col("wave_from").alias("wave"), pl.col("wave").alias("wave_to"))
    )


def compute_retest(scores: pl.DataFrame, config: RetestConfig | None = None) -> RetestResult:
    """Test-retest ICC(2,1) and ICC(3,1) between waves, per instrument scale.

    Parameters
    ----------
    scores
        The scores table: ``participant_id, wave, instrument, scale, score`` (null score
        = not scored). A participant's repeated rows for one (wave, instrument, scale)
        keep the first.
    config
        :class:`RetestConfig` (default: consecutive waves, 95 % intervals).

    Returns
    -------
    RetestResult
        ``to_frame()``: instrument, scale, wave_from, wave_to, icc_type, n (participants
        scored at both waves), icc, ci_low, ci_high, f, df1, df2, p_value (H0: ICC = 0),
        the three mean squares, and message (``ok``, ``too_few_participants``,
        ``zero_variance``: no variance between participants or error; or
        ``no_error_variance``: identical scores at both waves, F infinite).

    Notes
    -----
    The ANOVA sums come from one polars aggregation per wave pair group (centred sums of
    squares and cross-products), so the cost is one join of the scores table with
    itself; there is no loop over participants.
    """
    config = config or RetestConfig()
    need = {"participant_id", "wave", "instrument", "scale", "score"}
    missing = need - set(scores.columns)
    if missing:
        raise ValueError(f"scores table lacks columns {sorted(missing)}")
    keys = ["instrument", "scale"]
    s = (
        scores.lazy()
        .select(
            pl.col("participant_id").cast(pl.String),
            pl.col("wave").cast(pl.Int32),
            pl.col("instrument").cast(pl.String),
            pl.col("scale").cast(pl.String),
            pl.col("score").cast(pl.Float64),
        )
        .filter(pl.col("score").is_not_null() & pl.col("score").is_not_nan())
        .unique(subset=["participant_id", "wave", *keys], keep="first")
        .collect()
    )
    if s.height == 0:
        return RetestResult(pl.DataFrame(schema=RETEST_COLUMNS), config, "no_data")
    pairs = _wave_pairs(s, config.pairing)
    a, b = pl.col("a"), pl.col("b")
    sums = (
        s.rename({"score": "a"})
        .join(pairs, on=[*keys, "wave"])
        .join(
            s.rename({"wave": "wave_to", "score": "b"}),
            on=["participant_id", *keys, "wave_to"],
        )
        .group_by([*keys, "wave", "wave_to"])
        .agg(
            pl.len().alias("n"),
            a.mean().alias("mean_a"),
            b.mean().alias("mean_b"),
            ((a - a.mean()) ** 2).sum().alias("saa"),
            ((b - b.mean()) ** 2).sum().alias("sbb"),
            ((a - a.mean()) * (b - b.mean())).sum().alias("sab"),
        )
        .sort([*keys, "wave", "wave_to"])
    )
    # pairs with no participant in common still get a row (n = 0)
    sums = (
        pairs.join(sums, on=[*keys, "wave", "wave_to"], how="left")
        .with_columns(pl.col("n").fill_null(0))
        .sort([*keys, "wave", "wave_to"])
    )
    n = sums["n"].to_numpy().astype(np.float64)
    saa, sbb, sab = (sums[c].fill_null(np.nan).to_numpy() for c in ("saa", "sbb", "sab"))
    diff = (sums["mean_a"] - sums["mean_b"]).fill_null(np.nan).to_numpy()
    # Two-way ANOVA with k = 2 occasions from centred sums (see two_way_mean_squares):
    # SSR = (saa + sbb + 2 sab) / 2, SSC = n (mean_a - mean_b)^2 / 2,
    # SSE = (saa + sbb - 2 sab) / 2; df = n - 1, 1, n - 1.
    with np.errstate(divide="ignore", invalid="ignore"):
        msr = (saa + sbb + 2.0 * sab) / 2.0 / (n - 1.0)
        msc = n * diff**2 / 2.0
        mse = np.maximum((saa + sbb - 2.0 * sab) / 2.0, 0.0) / (n - 1.0)
    r = icc_from_mean_squares(msr, msc, mse, n, 2, config.alpha)
    tol = 1e-12 * np.maximum(np.abs(msr), 1.0)
    message = np.where(
        n < config.min_participants,
        "too_few_participants",
        np.where(
            (msr <= tol) | (~np.isfinite(msr)),
            "zero_variance",
            np.where(mse <= tol, "no_error_variance", "ok"),
        ),
    )
    ok = message == "ok"

    def col(v: np.ndarray) -> np.ndarray:
        return np.where(ok, v, np.nan)

    base = sums.select(
        *keys,
        pl.col("wave").alias("wave_from"),
        pl.col("wave_to").cast(pl.Int32),
        pl.col("n").cast(pl.Int64),
    )
    frames = []
    for icc_type, stem in (("icc2_1", "icc2"), ("icc3_1", "icc3")):
        frames.append(
            base.with_columns(
                pl.lit(icc_type).alias("icc_type"),
                pl.Series("icc", col(r[stem])),
                pl.Series("ci_low", col(r[f"{stem}_low"])),
                pl.Series("ci_high", col(r[f"{stem}_high"])),
                pl.Series("f", col(r["f"])),
                pl.Series("df1", r["df1"]),
                pl.Series("df2", r["df2"]),
                pl.Series("p_value", col(r["p"])),
                pl.Series("ms_participants", msr),
                pl.Series("ms_waves", msc),
                pl.Series("ms_error", mse),
                pl.Series("message", message.astype(str)),
            )
        )
    table = (
        pl.concat(frames)
        .with_columns(pl.col(pl.Float64).fill_nan(None))
        .select([pl.col(c).cast(t) for c, t in RETEST_COLUMNS.items()])
        .sort(["instrument", "scale", "wave_from", "wave_to", "icc_type"])
    )
    return RetestResult(table, config, "ok")
