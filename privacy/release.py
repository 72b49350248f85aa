"""Differentially private releases of a study's scores: the one door to the public tier.

Privacy definition
------------------
Pure ε-differential privacy (Dwork, McSherry, Nissim & Smith 2006) with the *participant*
as the privacy unit: two score tables are neighbours when they differ in all rows of one
participant (every wave, every scale). Noise is (discrete) Laplace, drawn by OpenDP's
polars API (``dp.m.make_private_lazyframe``, measure ``max_divergence``). Releases
compose sequentially: the ledger adds their ε up against the study's budget.

How each participant's contribution is bounded
----------------------------------------------
:func:`_prepare` runs row-local and participant-local steps in polars: keep the public
arms, waves and scales only, scale each score to its instrument range
``x01 = (score - lo) / (hi - lo)`` (clipped to [0, 1]) in fixed point
``xq = round(x01 * Q)``, ``Q = 10_000`` (integer sums are exact in OpenDP, so the charged ε
is exactly the budgeted ε; rounding moves a mean by at most 5e-5 of the range), and keep
**one row per participant x wave x scale**. Hence a participant has at most ``W * S`` rows
and at most one row in any output cell. Each query then tells OpenDP that bound as the
privacy unit (``d_in``: ``Bound(per_group=k)`` rows in all, ``Bound(by=cells,
per_group=1)``): ``k = W`` for the counts (primary-outcome rows), ``W * S`` for the scale
means, 2 for the histogram (baseline and final), ``S`` for the change effects (one change
per scale). OpenDP derives each aggregate's sensitivity from that bound and the clipping
bounds. (OpenDP's own identifier truncation, ``int_range().over(id) < k``, gives the same
bound but costs a window over 10^7 rows; see the benchmark.)

Releases (one OpenDP query each, many aggregates batched per query)
-------------------------------------------------------------------
``participant_counts``  participants with any score, per arm x wave.
``scale_means``         noisy count and noisy sum per arm x wave x scale -> mean, with
                        a (1 - alpha) noise margin that is the exact quantile of the two
                        Laplace noise terms (``laplace_sum_margin``), not 1.96 sd.
``primary_histogram``   primary outcome in equal-width bins at baseline and final wave.
``change_effects``      per arm x scale, noisy count, sum and sum of squares of the
                        change from baseline (final - wave 0); the treatment effect is the
                        difference in mean change, with a CI whose variance adds the
                        sampling variance (from the noisy second moment) and the DP noise
                        variance (delta method; Wald interval, normal approximation).

Each query's noise is calibrated to its ε by building the measurement once with unit
scales, reading its privacy map, and rescaling (``global_scale``): no search, no 2-s
``summarize``. The ε charged is ``measurement.map(d_in)`` as OpenDP computes it.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import opendp.prelude as dp
import polars as pl
from scipy import stats

from privacy.ledger import BudgetExceededError, LedgerSummary, PrivacyLedger

ReleaseKind = Literal["participant_counts", "scale_means", "primary_histogram", "change_effects"]
RELEASE_KINDS: tuple[ReleaseKind, ...] = (
    "participant_counts",
    "scale_means",
    "primary_histogram",
    "change_effects",
)
SuiteStatus = Literal["ok", "refused", "partial"]
ReleaseOutcome = Literal["charged", "served", "refused"]

PRIVACY_DEFINITION = (
    "pure epsilon-differential privacy; unit: one participant (all rows, all waves)"
)
FIXED_POINT_Q = 10_000
"""Fixed-point resolution of scores scaled to [0, 1] (1e-4 of the instrument range)."""
LARGE_EPSILON = 5.0
MAX_ROWS_PUBLIC = 2**31
"""Public upper bound on table length that OpenDP needs for integer sums (overflow check)."""
SPEC_VERSION = "flourish-dp-release/1"
_DIGITS = 6

dp.enable_features("contrib")


class LargeEpsilonWarning(UserWarning):
    """A release or budget uses ε above 5, where the privacy guarantee is weak."""


# ---------------------------------------------------------------------- public types


@dataclass(frozen=True)
class ReleasePlanInfo:
    """Public design facts the releases are keyed by (from the analysis plan and spec).

    Parameters
    ----------
    control_arm, treatment_arm
        Arm labels; rows of other arms are not released.
    primary_outcome
        ``instrument.scale`` of the primary outcome (histogram).
    waves
        The design's waves (public; used as keys so that empty cells are still released).
    final_wave
        Wave of the change-from-baseline comparison; default ``max(waves)``.
    histogram_bins
        Equal-width bins over the primary outcome's range.
    alpha
        1 - confidence level of intervals and noise bounds.
    """

    control_arm: str
    treatment_arm: str
    primary_outcome: str
    waves: tuple[int, ...]
    final_wave: int | None = None
    histogram_bins: int = 10
    alpha: float = 0.05

    @property
    def last_wave(self) -> int:
        """The wave compared with baseline (wave 0)."""
        return max(self.waves) if self.final_wave is None else self.final_wave

    def as_dict(self) -> dict[str, object]:
        """Plain dict for the canonical spec."""
        return {
            "control_arm": self.control_arm,
            "treatment_arm": self.treatment_arm,
            "primary_outcome": self.primary_outcome,
            "waves": sorted(int(w) for w in self.waves),
            "final_wave": self.last_wave,
            "histogram_bins": self.histogram_bins,
            "alpha": self.alpha,
        }


def _round(obj: Any) -> Any:
    """Round floats to 6 decimals (NaN/inf -> None), recursively; deterministic JSON input."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        x = float(obj)
        if not math.isfinite(x):
            return None
        r = round(x, _DIGITS)
        return 0.0 if r == 0 else r
    if isinstance(obj, Mapping):
        return {str(k): _round(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_round(v) for v in obj]
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def _canonical(obj: Any) -> str:
    return json.dumps(_round(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True)
class DPRelease:
    """One differentially private release, as stored in the ledger and shown in public.

    Attributes
    ----------
    release_id
        sha256 of the canonical spec and the data version (hex).
    kind
        One of :data:`RELEASE_KINDS`.
    spec
        Everything that determines the release except the data: keys, bounds, ε, noise
        scales, privacy unit, plan facts.
    values
        Records (rounded to 6 decimals); :meth:`to_frame` gives a polars frame.
    columns
        Column order of :meth:`to_frame`.
    mechanism
        Noise mechanism in words.
    privacy_definition
        The DP definition and privacy unit.
    epsilon
        Privacy loss charged (pure ε).
    accuracy
        Noise scales and the 95% (``1 - alpha``) bound of the noise, per aggregate.
    data_version
        Version of the score table it was drawn from.
    created_at
        UTC time the noise was drawn (ISO 8601).
    """

    release_id: str
    kind: str
    spec: dict[str, Any]
    values: tuple[dict[str, Any], ...]
    columns: tuple[str, ...]
    mechanism: str
    privacy_definition: str
    epsilon: float
    accuracy: dict[str, Any]
    data_version: str
    created_at: str

    def to_frame(self) -> pl.DataFrame:
        """The released values as a polars frame (columns in :attr:`columns` order)."""
        if not self.values:
            return pl.DataFrame(schema=dict.fromkeys(self.columns, pl.Null))
        return pl.DataFrame(list(self.values), infer_schema_length=None).select(self.columns)

    def as_dict(self) -> dict[str, Any]:
        """Plain, rounded dict of every field."""
        return {
            "release_id": self.release_id,
            "kind": self.kind,
            "spec": self.spec,
            "values": [dict(v) for v in self.values],
            "columns": list(self.columns),
            "mechanism": self.mechanism,
            "privacy_definition": self.privacy_definition,
            "epsilon": self.epsilon,
            "accuracy": self.accuracy,
            "data_version": self.data_version,
            "created_at": self.created_at,
        }

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, floats rounded; byte-stable.

        Examples
        --------
        >>> r = DPRelease("id", "k", {}, ({"n": 1, "m": 0.1234567},), ("n", "m"), "Laplace",
        ...               "pure", 0.5, {}, "v1", "2026-01-01T00:00:00+00:00")
        >>> DPRelease.from_json(r.to_json()).to_json() == r.to_json()
        True
        """
        return _canonical(self.as_dict())

    @classmethod
    def from_json(cls, text: str) -> DPRelease:
        """Rebuild a release from :meth:`to_json` output."""
        d = json.loads(text)
        return cls(
            release_id=d["release_id"],
            kind=d["kind"],
            spec=d["spec"],
            values=tuple(d["values"]),
            columns=tuple(d["columns"]),
            mechanism=d["mechanism"],
            privacy_definition=d["privacy_definition"],
            epsilon=float(d["epsilon"]),
            accuracy=d["accuracy"],
            data_version=d["data_version"],
            created_at=d["created_at"],
        )


@dataclass(frozen=True)
class ReleaseSuiteResult:
    """What :func:`release_study` did.

    ``status`` is ``ok`` when every requested release was drawn or served from the
    ledger, ``refused`` when the budget could not cover the new releases (nothing was
    released), ``partial`` when a concurrent releaser spent the budget midway.
    ``message`` is a code: ``ok``, ``budget_exceeded``, ``budget_exceeded_midway``.
    """

    status: SuiteStatus
    message: str
    releases: tuple[DPRelease, ...]
    outcomes: tuple[dict[str, Any], ...]
    epsilon_spent_now: float
    budget: LedgerSummary
    detail: str = ""

    def to_frame(self) -> pl.DataFrame:
        """One row per requested release: kind, release_id, epsilon, outcome."""
        schema = {
            "kind": pl.String,
            "release_id": pl.String,
            "epsilon": pl.Float64,
            "outcome": pl.String,
        }
        return pl.DataFrame(list(self.outcomes), schema=schema, orient="row")


# ---------------------------------------------------------------------- preparation


@dataclass(frozen=True)
class _Prepared:
    frame: pl.DataFrame  # pid (identifier), arm (0/1), wave, key, xq
    arms: tuple[str, str]
    waves: tuple[int, ...]
    scales: tuple[tuple[str, str, float, float], ...]  # instrument, scale, lo, hi (key = index)
    primary_key: int
    final_wave: int
    plan: ReleasePlanInfo
    privacy_unit: str
    data_version: str = ""
    path: str | None = None  # the frame as an Arrow IPC file, scanned lazily by queries

    def source(self) -> pl.LazyFrame:
        """The prepared table as a LazyFrame.

        OpenDP serialises the input plan across its FFI; a scan of a file serialises as a
        path, an in-memory frame as all of its bytes (seconds at 10^7 rows).
        """
        return pl.scan_ipc(self.path) if self.path else self.frame.lazy()


def _normalise_bounds(
    bounds: Mapping[tuple[str, str], tuple[float, float]] | pl.DataFrame,
) -> tuple[tuple[str, str, float, float], ...]:
    if isinstance(bounds, pl.DataFrame):
        cols = set(bounds.columns)
        lo = "lo" if "lo" in cols else "min"
        hi = "hi" if "hi" in cols else "max"
        missing = {"instrument", "scale", lo, hi} - cols
        if missing:
            raise ValueError(f"bounds frame lacks columns {sorted(missing)}")
        items = {
            (str(r["instrument"]), str(r["scale"])): (float(r[lo]), float(r[hi]))
            for r in bounds.iter_rows(named=True)
        }
    else:
        items = {(str(k[0]), str(k[1])): (float(v[0]), float(v[1])) for k, v in bounds.items()}
    if not items:
        raise ValueError("bounds name no scale")
    out = []
    for (inst, sc), (lo, hi) in sorted(items.items()):
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise ValueError(f"bounds of {inst}.{sc} must be finite with hi > lo, got {lo}, {hi}")
        out.append((inst, sc, lo, hi))
    return tuple(out)


def _prepare(
    scores: pl.DataFrame,
    participants: pl.DataFrame | None,
    bounds: tuple[tuple[str, str, float, float], ...],
    plan: ReleasePlanInfo,
    privacy_unit: str,
) -> _Prepared:
    needed = {privacy_unit, "wave", "instrument", "scale", "score"}
    missing = needed - set(scores.columns)
    if missing:
        raise ValueError(f"scores lacks columns {sorted(missing)}")
    frame = scores.lazy().select(
        pl.col(privacy_unit), *(["arm"] if "arm" in scores.columns else []),
        "wave", "instrument", "scale", "score",
    )
    if "arm" not in scores.columns:
        if participants is None or not {privacy_unit, "arm"} <= set(participants.columns):
            raise ValueError(f"scores has no 'arm'; pass participants with {privacy_unit}, arm")
        arms = participants.lazy().select(privacy_unit, pl.col("arm").cast(pl.String)).unique(
            subset=[privacy_unit], keep="first"
        )
        frame = frame.join(arms, on=privacy_unit, how="inner")
    # Scale key by comparison with the few public (instrument, scale) pairs: far cheaper
    # than a join on two string columns at 10^7 rows.
    key_expr: Any = pl.lit(None, dtype=pl.Int32)
    for i, (inst, sc, _, _) in reversed(list(enumerate(bounds))):
        key_expr = (
            pl.when((pl.col("instrument") == inst) & (pl.col("scale") == sc))
            .then(pl.lit(i, dtype=pl.Int32))
            .otherwise(key_expr)
        )
    lo_of = {i: b[2] for i, b in enumerate(bounds)}
    hi_of = {i: b[3] for i, b in enumerate(bounds)}
    arms_t = (plan.control_arm, plan.treatment_arm)
    waves = tuple(sorted({int(w) for w in plan.waves}))
    x01 = ((pl.col("score") - pl.col("lo")) / (pl.col("hi") - pl.col("lo"))).clip(0.0, 1.0)
    prepared = (
        frame.with_columns(
            pl.col("wave").cast(pl.Int32),
            pl.col("arm").cast(pl.String),
            pl.col("instrument").cast(pl.String),
            pl.col("scale").cast(pl.String),
        )
        .filter(
            pl.col("arm").is_in(arms_t)
            & pl.col("wave").is_in(waves)
            & pl.col("score").is_not_null()
            & pl.col("score").is_not_nan()
            & pl.col(privacy_unit).is_not_null()
        )
        .with_columns(key_expr.alias("key"))
        .filter(pl.col("key").is_not_null())
        .with_columns(
            pl.col("key").replace_strict(lo_of, return_dtype=pl.Float64).alias("lo"),
            pl.col("key").replace_strict(hi_of, return_dtype=pl.Float64).alias("hi"),
        )
        .select(
            # A 64-bit hash of the id as the participant key: cheaper than 64-character
            # pseudonyms. Two ids colliding (chance ~n^2 / 2^65, 1e-9 at n = 200,000) would
            # share one participant's row bound; we accept that as negligible.
            pl.col(privacy_unit).cast(pl.String).hash(seed=0).reinterpret(signed=True)
            .alias("pid"),
            (pl.col("arm") == arms_t[1]).cast(pl.Int32).alias("arm"),  # 0 control, 1 treatment
            "wave",
            "key",
            (x01 * FIXED_POINT_Q).round(0).cast(pl.Int64).alias("xq"),
        )
        .with_columns(
            (pl.col("pid").hash(seed=1) ^ (pl.col("wave") * 65_536 + pl.col("key")).hash(seed=2))
            .alias("_uk")
        )
        .collect()
    )
    # The contribution bound rests on this: one row per participant x wave x scale, so a
    # participant has at most W*S rows and at most one in any arm x wave x scale cell.
    # (Checking is cheaper than de-duplicating 10^7 rows that are already unique.)
    if prepared.get_column("_uk").n_unique() != prepared.height:
        prepared = prepared.unique(subset=["_uk"], keep="any")
    prepared = prepared.drop("_uk")
    p_inst, _, p_scale = plan.primary_outcome.partition(".")
    keys = [(b[0], b[1]) for b in bounds]
    if (p_inst, p_scale) not in keys:
        raise ValueError(f"bounds lack the primary outcome {plan.primary_outcome}")
    if plan.last_wave not in waves or 0 not in waves:
        raise ValueError("plan waves must include baseline 0 and the final wave")
    return _Prepared(
        frame=prepared,
        arms=arms_t,
        waves=waves,
        scales=bounds,
        primary_key=keys.index((p_inst, p_scale)),
        final_wave=plan.last_wave,
        plan=plan,
        privacy_unit=privacy_unit,
    )


# ---------------------------------------------------------------------- OpenDP plumbing


_ATOM = {
    pl.Int64: lambda: dp.atom_domain(T=dp.i64),
    pl.Int32: lambda: dp.atom_domain(T=dp.i32),
    pl.String: lambda: dp.atom_domain(T=dp.String),
}


def _domain(schema: Mapping[str, pl.DataType]) -> Any:
    series = [dp.series_domain(name, _ATOM[dtype]()) for name, dtype in schema.items()]
    return dp.with_margin(
        dp.lazyframe_domain(series), dp.polars.Margin(by=[], max_length=MAX_ROWS_PUBLIC)
    )


def _metric() -> Any:
    return dp.frame_distance(dp.symmetric_distance())


def _d_in(k: int, by: Sequence[str]) -> list[Any]:
    """One participant: at most ``k`` rows in all, at most one row in any output cell.

    :func:`_prepare` makes this true (one row per participant x wave x scale, public waves
    and scales only); each query's own filter keeps it true (see the query builders).
    """
    return [
        dp.polars.Bound(per_group=k),
        dp.polars.Bound(by=[pl.col(c) for c in by], per_group=1),
    ]


@dataclass(frozen=True)
class _Query:
    """A built measurement with the scales it adds noise at."""

    measurement: Any
    epsilon: float
    scales: dict[str, float]  # aggregate name -> absolute noise scale (in its own units)
    k: int  # rows per participant, at most
    by: tuple[str, ...]
    d_in: list[Any]


def _build_query(
    schema: Mapping[str, pl.DataType],
    keys: pl.DataFrame,
    by: Sequence[str],
    k: int,
    aggs: Mapping[str, tuple[str | None, tuple[int, int] | None, float]],
    epsilon: float,
) -> _Query:
    """Build one batched query at exactly ``epsilon``.

    ``aggs`` maps output name -> (column or None for a count, clip bounds, unit scale).
    All aggregates share ε equally when unit scales equal their per-row sensitivity.
    """

    def exprs(c: float) -> list[pl.Expr]:
        out = []
        for name, (col, bnd, unit) in aggs.items():
            if col is None:
                out.append(dp.len(scale=unit * c, signed=True).alias(name))
            else:
                out.append(pl.col(col).dp.sum(bnd, scale=unit * c).alias(name))
        return out

    def make(c: float) -> Any:
        inner = pl.LazyFrame(schema=dict(schema)).group_by(*by).agg(exprs(c))
        plan = keys.lazy().join(inner, how="left", on=list(by), nulls_equal=True)
        return dp.m.make_private_lazyframe(
            _domain(schema), _metric(), dp.max_divergence(), plan
        )

    d_in = _d_in(k, by)
    probe = float(make(1.0).map(d_in))
    c = probe / epsilon
    m = make(c)
    eps = float(m.map(d_in))
    while eps > epsilon * (1 + 1e-12):  # float rounding in the map; never overspend
        c *= (eps / epsilon) * (1 + 1e-9)
        m = make(c)
        eps = float(m.map(d_in))
    return _Query(m, eps, {n: a[2] * c for n, a in aggs.items()}, k, tuple(by), d_in)


def _run(query: _Query, frame: pl.LazyFrame | pl.DataFrame, p: _Prepared) -> pl.DataFrame:
    out = query.measurement(frame.lazy()).collect().sort(list(query.by))
    if "arm" in out.columns:
        labels = {0: p.arms[0], 1: p.arms[1]}
        out = out.with_columns(pl.col("arm").replace_strict(labels, return_dtype=pl.String))
    return out


def _dlap_var(b: float) -> float:
    """Variance of the discrete Laplace (two-sided geometric) with scale b: 2a/(1-a)^2."""
    a = math.exp(-1.0 / b)
    return 2.0 * a / (1.0 - a) ** 2


def _dlap_bound(b: float, alpha: float) -> float:
    """(1-alpha) bound on |noise| of OpenDP's discrete Laplace with scale b."""
    return float(dp.discrete_laplacian_scale_to_accuracy(b, alpha))


def laplace_sum_margin(b1: np.ndarray, b2: np.ndarray, alpha: float) -> np.ndarray:
    """``t`` with ``P(|L1 + L2| > t) = alpha`` for independent Laplace(0, b1), Laplace(0, b2).

    The DP noise of a released mean is (to first order) the sum noise minus the mean times
    the count noise: two independent Laplace terms. Their sum is not normal; ``1.96 sd``
    covers only 93.75 % of a single Laplace (``1 - exp(-1.96 sqrt 2)``). The tail of the
    sum follows from its characteristic function ``1 / ((1 + b1² w²)(1 + b2² w²))``::

        P(|X| > t) = (b1² exp(-t/b1) - b2² exp(-t/b2)) / (b1² - b2²)      (b1 != b2)
                   = exp(-t/b) (1 + t / (2b))                              (b1 == b2 == b)

    solved for ``t`` by bisection, elementwise (vectorised over cells).
    """
    b1, b2 = np.broadcast_arrays(np.asarray(b1, dtype=float), np.asarray(b2, dtype=float))
    big = np.maximum(b1, b2)
    r = np.divide(np.minimum(b1, b2), big, out=np.zeros_like(big), where=big > 0)
    near = r > 1.0 - 1e-6

    def tail(u: np.ndarray) -> np.ndarray:
        # u = t / big; r < 1 uses the first form, r ~ 1 the second
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            small = np.where(r > 0, np.exp(-u / np.where(r > 0, r, 1.0)), 0.0)
            general = (np.exp(-u) - r**2 * small) / np.where(near, 1.0, 1.0 - r**2)
        return np.where(near, np.exp(-u) * (1.0 + u / 2.0), general)

    lo = np.zeros_like(big)
    hi = np.full_like(big, 2.0 * -math.log(alpha) + 5.0)  # tail(hi) < alpha for every r
    for _ in range(80):
        mid = (lo + hi) / 2.0
        above = tail(mid) > alpha
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    return big * (lo + hi) / 2.0


def _keys(**cols: Sequence[Any]) -> pl.DataFrame:
    dtypes = {"arm": pl.Int32, "wave": pl.Int32, "key": pl.Int32, "bin": pl.Int32}
    out: pl.DataFrame | None = None
    for name, values in cols.items():
        f = pl.DataFrame({name: pl.Series(list(values), dtype=dtypes[name])})
        out = f if out is None else out.join(f, how="cross")
    assert out is not None
    return out


MECHANISM = (
    "discrete Laplace noise (OpenDP make_private_lazyframe) on integer counts and "
    "fixed-point sums; each participant bounded to one row per wave and scale"
)


# ---------------------------------------------------------------------- the four queries


def _q_counts(p: _Prepared, epsilon: float) -> tuple[_Query, pl.DataFrame]:
    # participants with a primary-outcome score: one row per participant x wave already
    frame = p.source().filter(pl.col("key") == p.primary_key).select("pid", "arm", "wave")
    q = _build_query(
        frame.collect_schema(), _keys(arm=(0, 1), wave=p.waves), ("arm", "wave"), len(p.waves),
        {"n": (None, None, 1.0)}, epsilon,
    )
    return q, frame


def _cell_parts(p: _Prepared) -> tuple[int, int]:
    n_scales = len(p.scales)
    return len(p.waves) * n_scales, n_scales


def _q_means(p: _Prepared, epsilon: float) -> tuple[_Query, pl.DataFrame]:
    # One Int32 cell code for arm x wave x scale: grouping 10^7 rows by one column is
    # several times faster than by three; decoded in _post_means.
    per_arm, n_scales = _cell_parts(p)
    wave_idx = pl.col("wave")
    if p.waves != tuple(range(len(p.waves))):
        wave_idx = wave_idx.replace_strict({w: i for i, w in enumerate(p.waves)})
    cell = pl.col("arm") * per_arm + wave_idx * n_scales + pl.col("key")
    frame = p.source().select(cell.cast(pl.Int32).alias("cell"), "xq")
    q = _build_query(
        frame.collect_schema(),
        pl.DataFrame({"cell": pl.Series(range(2 * per_arm), dtype=pl.Int32)}),
        ("cell",),
        len(p.waves) * len(p.scales),
        {"n": (None, None, 1.0), "sum_q": ("xq", (0, FIXED_POINT_Q), float(FIXED_POINT_Q))},
        epsilon,
    )
    return q, frame


def _q_hist(p: _Prepared, epsilon: float) -> tuple[_Query, pl.DataFrame]:
    nb = p.plan.histogram_bins
    frame = p.source().filter(
        (pl.col("key") == p.primary_key) & pl.col("wave").is_in([0, p.final_wave])
    ).select(
        "pid", "arm", "wave",
        (pl.col("xq") * nb // FIXED_POINT_Q).clip(0, nb - 1).cast(pl.Int32).alias("bin"),
    )
    q = _build_query(
        frame.collect_schema(),
        _keys(arm=(0, 1), wave=sorted({0, p.final_wave}), bin=range(nb)),
        ("arm", "wave", "bin"), 2, {"n": (None, None, 1.0)}, epsilon,
    )
    return q, frame


def _q_change(p: _Prepared, epsilon: float) -> tuple[_Query, pl.DataFrame]:
    src = p.source()
    # join on one 64-bit participant x scale key (cheaper than on two columns)
    pk = (pl.col("pid").hash(seed=3) ^ pl.col("key").hash(seed=4)).alias("pk")
    base = src.filter(pl.col("wave") == 0).select(pk, "pid", "arm", "key", x0="xq")
    last = src.filter(pl.col("wave") == p.final_wave).select(pk, x1="xq")
    d = pl.col("x1") - pl.col("x0")
    frame = base.join(last, on="pk", how="inner").select(
        "pid", "arm", "key",
        d.alias("dq"),
        (d * d / FIXED_POINT_Q).round(0).cast(pl.Int64).alias("dq2"),
    )
    qf = float(FIXED_POINT_Q)
    q = _build_query(
        frame.collect_schema(),
        _keys(arm=(0, 1), key=range(len(p.scales))),
        ("arm", "key"),
        len(p.scales),
        {
            "n": (None, None, 1.0),
            "sum_q": ("dq", (-FIXED_POINT_Q, FIXED_POINT_Q), qf),
            "sumsq_q": ("dq2", (0, FIXED_POINT_Q), qf),
        },
        epsilon,
    )
    return q, frame


# ---------------------------------------------------------------------- post-processing


def _scale_cols(p: _Prepared) -> pl.DataFrame:
    inst, sc, lo, hi = (list(x) for x in zip(*p.scales, strict=True))
    return pl.DataFrame(
        {
            "key": pl.Series(range(len(p.scales)), dtype=pl.Int32),
            "instrument": inst,
            "scale": sc,
            "lo": lo,
            "hi": hi,
        }
    )


def _post_counts(p: _Prepared, q: _Query, raw: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    z = _dlap_bound(q.scales["n"], p.plan.alpha)
    out = raw.select(
        "arm", "wave",
        pl.col("n").fill_null(0).alias("n_participants"),
        pl.lit(z).alias("noise_bound"),
    )
    return out, {"n_participants": {"scale": q.scales["n"], "bound": z}}


def _post_means(p: _Prepared, q: _Query, raw: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    v_n, v_s = _dlap_var(q.scales["n"]), _dlap_var(q.scales["sum_q"]) / FIXED_POINT_Q**2
    per_arm, n_scales = _cell_parts(p)
    raw = raw.with_columns(
        (pl.col("cell") // per_arm)
        .replace_strict({0: p.arms[0], 1: p.arms[1]}, return_dtype=pl.String)
        .alias("arm"),
        ((pl.col("cell") % per_arm) // n_scales)
        .replace_strict(dict(enumerate(p.waves)), return_dtype=pl.Int32)
        .alias("wave"),
        (pl.col("cell") % n_scales).cast(pl.Int32).alias("key"),
    )
    n = pl.col("n").fill_null(0).cast(pl.Float64)
    m01 = (pl.col("sum_q").fill_null(0) / FIXED_POINT_Q / n).clip(0.0, 1.0)
    width = pl.col("hi") - pl.col("lo")
    sd = width * (v_s + m01**2 * v_n).sqrt() / n
    ok = n >= 1
    out = raw.join(_scale_cols(p), on="key", how="left").with_columns(
        m01.alias("_m01"), n.alias("_n"), width.alias("_width"), sd.alias("_sd")
    )
    # margin: the exact (1 - alpha) quantile of the two Laplace noise terms (Laplace b from
    # the discrete noise's variance, var = 2 b²), not a normal approximation
    m = out["_m01"].fill_nan(0.0).fill_null(0.0).to_numpy()
    t = laplace_sum_margin(math.sqrt(v_s / 2.0), m * math.sqrt(v_n / 2.0), p.plan.alpha)
    moe = pl.col("_width") * pl.Series(t) / pl.col("_n")
    out = (
        out.select(
            "arm", "wave", "instrument", "scale",
            n.cast(pl.Int64).alias("n"),
            pl.when(ok).then(pl.col("lo") + pl.col("_width") * pl.col("_m01")).alias("mean"),
            pl.when(ok).then(pl.col("_sd")).alias("noise_sd"),
            pl.when(ok).then(moe).alias("noise_moe"),
            # coded: no estimate (noisy count < 1) / noise margin wider than half the range
            pl.when(~ok).then(pl.lit("too_few"))
            .when(moe >= pl.col("_width") / 2).then(pl.lit("noise_dominates"))
            .otherwise(pl.lit("ok")).alias("message"),
        )
        .sort("instrument", "scale", "arm", "wave")
    )
    acc = {
        "n": {"scale": q.scales["n"], "bound": _dlap_bound(q.scales["n"], p.plan.alpha)},
        "sum_fixed_point": {
            "scale": q.scales["sum_q"],
            "bound": _dlap_bound(q.scales["sum_q"], p.plan.alpha),
            "units": f"1/{FIXED_POINT_Q} of the scale range",
        },
        "mean": "noise_moe per row: exact (1-alpha) margin of the sum's and the count's "
        "Laplace noise through sum/n to first order (DP noise only)",
    }
    return out, acc


def _post_hist(p: _Prepared, q: _Query, raw: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    _, _, lo, hi = p.scales[p.primary_key]
    nb = p.plan.histogram_bins
    w = (hi - lo) / nb
    z = _dlap_bound(q.scales["n"], p.plan.alpha)
    out = raw.select(
        "arm", "wave", "bin",
        (lo + pl.col("bin") * w).alias("bin_low"),
        (lo + (pl.col("bin") + 1) * w).alias("bin_high"),
        pl.col("n").fill_null(0).alias("n"),
        pl.lit(z).alias("noise_bound"),
    )
    return out, {"n": {"scale": q.scales["n"], "bound": z}}


def _post_change(p: _Prepared, q: _Query, raw: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """Difference in mean change (treatment - control) with sampling + DP-noise variance.

    Per arm a: n_a, S_a, S2_a noisy; m_a = S_a / n_a and m2_a = S2_a / n_a on the [0,1]
    scale; s2_a = n_a/(n_a-1) (m2_a - m_a^2) clipped to [0, 1]. Var(m_a) is
    s2_a / n_a (sampling) + (Var S_a + m_a^2 Var n_a) / n_a^2 (noise, delta method on the
    ratio). The CI is Wald: (m_T - m_C) +/- z sqrt(sum of both arms' variances), in
    scale units after multiplying by the range.
    """
    zq = float(stats.norm.ppf(1 - p.plan.alpha / 2))
    qf = float(FIXED_POINT_Q)
    v_n = _dlap_var(q.scales["n"])
    v_s = _dlap_var(q.scales["sum_q"]) / qf**2
    n = pl.col("n").fill_null(0).cast(pl.Float64)
    m = pl.col("sum_q").fill_null(0) / qf / n
    m = m.clip(-1.0, 1.0)
    m2 = (pl.col("sumsq_q").fill_null(0) / qf / n).clip(0.0, 1.0)
    s2 = (n / (n - 1) * (m2 - m**2)).clip(0.0, 1.0)
    per_arm = raw.select(
        "arm", "key",
        n.alias("n"),
        m.alias("m"),
        (s2 / n).alias("v_samp"),
        ((v_s + m**2 * v_n) / n**2).alias("v_noise"),
    )
    t = per_arm.filter(pl.col("arm") == p.arms[1]).drop("arm")
    c = per_arm.filter(pl.col("arm") == p.arms[0]).drop("arm")
    j = t.join(c, on="key", suffix="_c").join(_scale_cols(p), on="key", how="left")
    width = pl.col("hi") - pl.col("lo")
    ok = (pl.col("n") >= 2) & (pl.col("n_c") >= 2)
    est = width * (pl.col("m") - pl.col("m_c"))
    se_s = width * (pl.col("v_samp") + pl.col("v_samp_c")).sqrt()
    se_n = width * (pl.col("v_noise") + pl.col("v_noise_c")).sqrt()
    se = (se_s**2 + se_n**2).sqrt()
    out = j.select(
        "instrument", "scale",
        pl.col("n").cast(pl.Int64).alias("n_treatment"),
        pl.col("n_c").cast(pl.Int64).alias("n_control"),
        pl.when(ok).then(width * pl.col("m")).alias("mean_change_treatment"),
        pl.when(ok).then(width * pl.col("m_c")).alias("mean_change_control"),
        pl.when(ok).then(est).alias("estimate"),
        pl.when(ok).then(se).alias("std_error"),
        pl.when(ok).then(se_s).alias("se_sampling"),
        pl.when(ok).then(se_n).alias("se_noise"),
        pl.when(ok).then(est - zq * se).alias("ci_low"),
        pl.when(ok).then(est + zq * se).alias("ci_high"),
        pl.when(ok).then(pl.lit("ok")).otherwise(pl.lit("too_few")).alias("message"),
    ).sort("instrument", "scale")
    acc = {
        name: {"scale": s, "bound": _dlap_bound(s, p.plan.alpha)} for name, s in q.scales.items()
    }
    acc["estimand"] = (
        f"difference in mean change from wave 0 to wave {p.final_wave} "
        f"({p.arms[1]} - {p.arms[0]}) among participants with both scores; "
        "Wald CI with sampling and DP-noise variance"
    )
    return out, acc


_QUERIES: dict[str, tuple[Callable, Callable]] = {
    "participant_counts": (_q_counts, _post_counts),
    "scale_means": (_q_means, _post_means),
    "primary_histogram": (_q_hist, _post_hist),
    "change_effects": (_q_change, _post_change),
}


def _spec(
    plan: ReleasePlanInfo,
    scales: tuple[tuple[str, str, float, float], ...],
    privacy_unit: str,
    kind: str,
    epsilon: float,
) -> dict[str, Any]:
    return {
        "format": SPEC_VERSION,
        "kind": kind,
        "epsilon": epsilon,
        "privacy_unit": privacy_unit,
        "privacy_definition": PRIVACY_DEFINITION,
        "plan": plan.as_dict(),
        "scales": [
            {"instrument": i, "scale": s, "lo": lo, "hi": hi} for i, s, lo, hi in scales
        ],
        "fixed_point_q": FIXED_POINT_Q,
    }


def release_id_of(spec: Mapping[str, Any], data_version: str) -> str:
    """sha256 (hex) of the canonical spec and the data version: the release's ledger key.

    Examples
    --------
    >>> a = release_id_of({"kind": "x", "epsilon": 0.5}, "v1")
    >>> a == release_id_of({"epsilon": 0.5, "kind": "x"}, "v1"), a == release_id_of({}, "v1")
    (True, False)
    """
    text = _canonical({"spec": dict(spec), "data_version": data_version})
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _draw(p: _Prepared, kind: str, epsilon: float, spec: dict, rid: str) -> DPRelease:
    build, post = _QUERIES[kind]
    q, frame = build(p, epsilon)
    raw = _run(q, frame, p)
    values, accuracy = post(p, q, raw)
    accuracy = {"alpha": p.plan.alpha, "epsilon_opendp_map": q.epsilon, **accuracy}
    full_spec = {**spec, "noise_scales": q.scales, "rows_per_participant": q.k}
    return DPRelease(
        release_id=rid,
        kind=kind,
        spec=_round(full_spec),
        values=tuple(_round(r) for r in values.to_dicts()),
        columns=tuple(values.columns),
        mechanism=MECHANISM,
        privacy_definition=PRIVACY_DEFINITION,
        epsilon=_round(epsilon),
        accuracy=_round(accuracy),
        data_version=p.data_version,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


# ---------------------------------------------------------------------- the door


def release_study(
    *,
    scores: pl.DataFrame,
    participants: pl.DataFrame | None,
    ledger: PrivacyLedger,
    bounds: Mapping[tuple[str, str], tuple[float, float]] | pl.DataFrame,
    plan_info: ReleasePlanInfo,
    data_version: str,
    epsilon_per_release: float | None = None,
    allocation: Mapping[ReleaseKind, float] | None = None,
    privacy_unit: str = "participant_id",
) -> ReleaseSuiteResult:
    """Make (or serve from the ledger) the study's differentially private releases.

    The only way participant data reaches the public tier. Each release is keyed by its
    spec and ``data_version``: asked again, it is served from the ledger (no fresh noise,
    no second charge). New releases are charged atomically with their stored result; if
    together they exceed what remains of the budget, none is drawn (``status="refused"``).

    Parameters
    ----------
    scores
        Participant x wave score table: ``privacy_unit, wave, instrument, scale, score``
        and ``arm`` (or ``participants`` supplies it).
    participants
        ``privacy_unit, arm``; used only when ``scores`` has no ``arm`` column.
    ledger
        The study's budget ledger.
    bounds
        Public range of every scale to release: ``{(instrument, scale): (lo, hi)}`` or a
        frame ``instrument, scale, lo, hi`` (or ``min, max``), e.g. from
        ``InstrumentSpec.scale_range``. Scales not named are not released.
    plan_info
        Arms, waves, primary outcome (public design facts).
    data_version
        Version of ``scores`` (e.g. its file's sha256); part of each release id.
    epsilon_per_release
        The same ε for each of the four releases (exclusive with ``allocation``).
    allocation
        ε per release kind; kinds not named are not released.
    privacy_unit
        Column identifying the privacy unit (one participant across rows and waves).

    Returns
    -------
    ReleaseSuiteResult
        Releases in ``RELEASE_KINDS`` order, what was charged or served, budget after.

    Raises
    ------
    ValueError
        Both or neither of ``epsilon_per_release`` / ``allocation``; unknown kinds;
        non-positive ε; malformed bounds or missing columns (programmer errors).

    Warns
    -----
    LargeEpsilonWarning
        When a release's ε or the study's budget exceeds 5.
    """
    if (epsilon_per_release is None) == (allocation is None):
        raise ValueError("pass exactly one of epsilon_per_release or allocation")
    if allocation is not None:
        unknown = set(allocation) - set(RELEASE_KINDS)
        if unknown:
            raise ValueError(f"unknown release kinds {sorted(unknown)}; known: {RELEASE_KINDS}")
        plan_eps = {k: float(allocation[k]) for k in RELEASE_KINDS if k in allocation}
    else:
        plan_eps = dict.fromkeys(RELEASE_KINDS, float(epsilon_per_release))
    if not plan_eps or any(not (e > 0 and math.isfinite(e)) for e in plan_eps.values()):
        raise ValueError(f"every release needs a finite epsilon > 0, got {plan_eps}")
    for kind, e in plan_eps.items():
        if e > LARGE_EPSILON:
            warnings.warn(
                f"{kind}: epsilon={e:g} > {LARGE_EPSILON:g} gives a weak privacy guarantee",
                LargeEpsilonWarning,
                stacklevel=2,
            )
    if ledger.budget > LARGE_EPSILON:
        warnings.warn(
            f"study budget epsilon={ledger.budget:g} > {LARGE_EPSILON:g} is a weak guarantee",
            LargeEpsilonWarning,
            stacklevel=2,
        )
    if privacy_unit not in scores.columns:
        raise ValueError(f"privacy unit column {privacy_unit!r} not in scores")
    norm_bounds = _normalise_bounds(bounds)
    specs = {
        k: _spec(plan_info, norm_bounds, privacy_unit, k, e) for k, e in plan_eps.items()
    }
    ids = {k: release_id_of(s, data_version) for k, s in specs.items()}
    stored = {k: ledger.get(rid) for k, rid in ids.items()}
    new_eps = sum(plan_eps[k] for k, e in stored.items() if e is None)
    summary = ledger.summary()
    if new_eps > summary.remaining + 1e-9:
        outcomes = tuple(
            {"kind": k, "release_id": ids[k], "epsilon": plan_eps[k],
             "outcome": "served" if stored[k] is not None else "refused"}
            for k in plan_eps
        )
        return ReleaseSuiteResult(
            status="refused",
            message="budget_exceeded",
            releases=(),
            outcomes=outcomes,
            epsilon_spent_now=0.0,
            budget=summary,
            detail=(
                f"new releases need epsilon={new_eps:.6g}; {summary.remaining:.6g} of "
                f"{summary.budget:.6g} remains; nothing was released"
            ),
        )
    releases: list[DPRelease] = []
    outcomes_l: list[dict[str, Any]] = []
    spent_now = 0.0
    status: SuiteStatus = "ok"
    message, detail = "ok", ""
    with tempfile.TemporaryDirectory(prefix="flourish-dp-") as tmp:
        prepared: _Prepared | None = None
        if new_eps > 0:  # served releases need no data preparation
            prepared = _prepare(scores, participants, norm_bounds, plan_info, privacy_unit)
            path = Path(tmp) / "prepared.arrow"
            prepared.frame.write_ipc(path)
            prepared = replace(prepared, data_version=data_version, path=str(path))
        for kind, eps in plan_eps.items():
            rid = ids[kind]

            def compute(kind: str = kind, eps: float = eps, rid: str = rid) -> str:
                assert prepared is not None
                return _draw(prepared, kind, eps, specs[kind], rid).to_json()

            try:
                res = ledger.charge_and_record(rid, kind, data_version, eps, compute)
            except BudgetExceededError as exc:
                status, message, detail = "partial", "budget_exceeded_midway", str(exc)
                outcomes_l.append(
                    {"kind": kind, "release_id": rid, "epsilon": eps, "outcome": "refused"}
                )
                continue
            releases.append(DPRelease.from_json(res.entry.payload))
            if res.status == "charged":
                spent_now += res.entry.epsilon
            outcomes_l.append(
                {
                    "kind": kind,
                    "release_id": rid,
                    "epsilon": res.entry.epsilon,
                    "outcome": "charged" if res.status == "charged" else "served",
                }
            )
    return ReleaseSuiteResult(
        status=status,
        message=message,
        releases=tuple(releases),
        outcomes=tuple(outcomes_l),
        epsilon_spent_now=spent_now,
        budget=ledger.summary(),
        detail=detail,
    )


def compute_data_version(scores: pl.DataFrame) -> str:
    """A content hash of a score table, independent of row order (hex sha256).

    Uses polars' row hash (stable for a given polars version and seed), sorted, then
    sha256; pass a file's own sha256 instead where one is at hand.
    """
    h = scores.hash_rows(seed=0, seed_1=1, seed_2=2, seed_3=3).sort().to_numpy()
    head = ",".join(f"{k}:{v}" for k, v in scores.schema.items()).encode()
    return hashlib.sha256(head + h.tobytes()).hexdigest()
