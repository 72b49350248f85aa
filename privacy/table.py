"""The participant-level public table: one row per participant, keys from declarations only.

Every public query runs on this table, so each participant contributes one row by
construction (the privacy unit is the participant). Group keys never come from the data:
the arm column is coded 0/1 against the *declared* control and treatment arms, and the
value columns exist only for declared outcomes at declared waves. A participant in an arm
the plan does not declare, or a score at a wave it does not declare, is dropped from the
public queries and counted (internal counts, printed by the CLI, never published).

The data version is a canonical hash of the table's contents (fixed-point values, sorted
rows, little-endian int64 bytes): it does not depend on the pseudonym key (ids are not in
it), on row order, or on the polars version (``hash_rows`` is stable only within one), so
re-running over the same responses is the same data version and spends nothing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from privacy.figures import FIXED_POINT_Q, PublicDeclaration


def value_column(outcome: str, wave: int) -> str:
    """Name of the [0, 1]-scaled value of ``outcome`` at ``wave`` in the public table."""
    return f"x|{outcome}|{wave}"


def group_column(breakdown: str) -> str:
    """Name of a breakdown's category code (index into the declared categories, -1: none)."""
    return f"g|{breakdown}"


@dataclass(frozen=True)
class PublicTable:
    """One row per participant of a declared arm, with its value columns.

    ``arm`` is 0 (control) or 1 (treatment); ``x|outcome|wave`` is the score scaled to
    [0, 1] by the instrument's range (null if none). ``dropped`` counts what the
    declarations kept out (internal; never published).
    """

    frame: pl.DataFrame
    data_version: str
    dropped: dict[str, int]

    @property
    def n_participants(self) -> int:
        """Rows (participants of the declared arms)."""
        return self.frame.height


def build_public_table(
    scores: pl.DataFrame,
    participants: pl.DataFrame,
    decl: PublicDeclaration,
    *,
    id_column: str = "participant_id",
) -> PublicTable:
    """Pivot scores to one row per participant, keyed by the declarations only.

    Parameters
    ----------
    scores
        ``participant_id, wave, instrument, scale, score`` (the internal score table).
    participants
        ``participant_id, arm`` and every covariate a figure is broken down by.
    decl
        The sealed public declaration (arms, waves, outcomes and their ranges).
    id_column
        The participant id column of both tables (never part of the output).

    Examples
    --------
    >>> from privacy.figures import FigureSpec
    >>> f = FigureSpec("means:a.b", "means", "a.b", "A", "B", "pts", 0, 10, "primary",
    ...                None, None, 1.0, 0)
    >>> d = PublicDeclaration("S", "c", "t", (0, 1), (f,), 1.0, {"c": 1, "t": 1})
    >>> s = pl.DataFrame({"participant_id": ["p", "p", "p"], "wave": [0, 1, 9],
    ...                   "instrument": "a", "scale": "b", "score": [5.0, 10.0, 1.0]})
    >>> t = build_public_table(s, pl.DataFrame({"participant_id": ["p"], "arm": ["t"]}), d)
    >>> t.frame.row(0), t.dropped["score_rows_at_undeclared_waves"]
    ((1, 0.5, 1.0), 1)
    """
    arms = {decl.control_arm: 0, decl.treatment_arm: 1}
    bounds = {f.outcome: (f.lo, f.hi) for f in decl.figures}
    waves = list(decl.waves)
    breakdowns: dict[str, tuple[str, ...]] = {}
    for f in decl.figures:
        if f.breakdown is not None:
            breakdowns[f.breakdown] = f.categories
    missing = [b for b in breakdowns if b not in participants.columns]
    if missing:
        raise ValueError(f"participants lack the declared breakdown column(s) {missing}")
    p = participants.select(pl.col(id_column).cast(pl.String), pl.col("arm").cast(pl.String),
                            *(pl.col(b).cast(pl.String) for b in breakdowns))
    p = p.unique(subset=[id_column], keep="first")
    declared = p.filter(pl.col("arm").is_in(list(arms)))
    s = scores.select(
        pl.col(id_column).cast(pl.String), pl.col("wave").cast(pl.Int64),
        (pl.col("instrument").cast(pl.String) + "." + pl.col("scale").cast(pl.String))
        .alias("outcome"),
        pl.col("score").cast(pl.Float64),
    )
    is_outcome = pl.col("outcome").is_in(list(bounds))
    in_wave = pl.col("wave").is_in(waves)
    known = pl.col(id_column).is_in(p[id_column].implode())
    in_arm = pl.col(id_column).is_in(declared[id_column].implode())
    counts = s.select(
        (is_outcome & ~in_wave).sum().alias("score_rows_at_undeclared_waves"),
        (is_outcome & in_wave & ~known).sum().alias("score_rows_of_unknown_participants"),
        (is_outcome & in_wave & known & ~in_arm).sum().alias("score_rows_in_undeclared_arms"),
        (is_outcome & in_wave & in_arm & (pl.col("score").is_null() | pl.col("score").is_nan()))
        .sum().alias("score_rows_without_a_score"),
    ).row(0, named=True)
    dropped = {k: int(v) for k, v in counts.items()}
    dropped["participants_in_undeclared_arms"] = p.height - declared.height
    codes = []
    for b, cats in breakdowns.items():
        code = pl.col(b).replace_strict({c: i for i, c in enumerate(cats)}, default=-1,
                                        return_dtype=pl.Int32)
        codes.append(code.alias(group_column(b)))
        dropped[f"participants_outside_the_declared_{b}_categories"] = int(
            declared.select((code < 0).sum()).item())
    # dense scatter: participant index x (outcome, wave) cell -> value in [0, 1]
    outcomes = list(decl.outcomes)
    cell_of = {(o, w): k for k, (o, w) in enumerate((o, w) for o in outcomes for w in waves)}
    rows = declared.with_row_index("_row").select(id_column, "_row", "arm", *codes)
    lo_of = {o: bounds[o][0] for o in outcomes}
    span_of = {o: bounds[o][1] - bounds[o][0] for o in outcomes}
    cells = pl.DataFrame(
        {"outcome": [o for o, _ in cell_of], "wave": [w for _, w in cell_of],
         "_cell": list(cell_of.values()), "_lo": [lo_of[o] for o, _ in cell_of],
         "_span": [span_of[o] for o, _ in cell_of]},
        schema={"outcome": pl.String, "wave": pl.Int64, "_cell": pl.Int64, "_lo": pl.Float64,
                "_span": pl.Float64},
    )
    long = (
        s.filter(pl.col("score").is_not_null() & pl.col("score").is_not_nan())
        .join(cells, on=["outcome", "wave"], how="inner")
        .join(rows.select(id_column, "_row"), on=id_column, how="inner")
        .select("_row", "_cell",
                ((pl.col("score") - pl.col("_lo")) / pl.col("_span")).clip(0.0, 1.0).alias("x"))
    )
    mat = np.full((declared.height, len(cell_of)), np.nan)
    r = long["_row"].to_numpy()
    c = long["_cell"].to_numpy()
    # one value per cell, always (a repeated score row keeps its first value)
    order = np.arange(len(r))[::-1]
    mat[r[order], c[order]] = long["x"].to_numpy()[order]
    columns = [value_column(o, w) for (o, w) in cell_of]
    frame = (
        pl.DataFrame({"arm": rows["arm"].replace_strict(arms, return_dtype=pl.Int32),
                      **{group_column(b): rows[group_column(b)] for b in breakdowns},
                      **{name: mat[:, k] for k, name in enumerate(columns)}})
        .fill_nan(None)
        # canonical order: ids are not in the table
        .sort(["arm", *(group_column(b) for b in breakdowns), *columns], nulls_last=True)
    )
    return PublicTable(frame=frame, data_version=compute_data_version(frame), dropped=dropped)


def compute_data_version(frame: pl.DataFrame) -> str:
    """Canonical sha256 of a public table: fixed-point values, rows sorted, int64 LE bytes.

    Independent of row order, of participant ids (not in the table) and of library
    versions: the bytes hashed are numpy int64 little-endian of ``round(x * Q)`` (null ->
    -1) under a header naming the columns.

    Examples
    --------
    >>> a = pl.DataFrame({"arm": [0, 1], "x|a.b|0": [0.5, None]})
    >>> compute_data_version(a) == compute_data_version(a.reverse())
    True
    """
    cols = sorted(frame.columns)
    ints = frame.select(
        (pl.col(c).cast(pl.Float64) * (FIXED_POINT_Q if c.startswith("x|") else 1)).round(0)
        .cast(pl.Int64).fill_null(-1).alias(c)
        for c in cols
    )
    mat = ints.to_numpy().astype("<i8", copy=False).reshape(frame.height, len(cols))
    if mat.size:
        mat = mat[np.lexsort(mat.T[::-1])]
    head = ("flourish-public-table/1\x1f" + "\x1f".join(cols) + f"\x1fQ={FIXED_POINT_Q}").encode()
    return hashlib.sha256(head + np.ascontiguousarray(mat).tobytes()).hexdigest()
