"""The public tier's objects: a DP release (one charged suite of figures) and its figures.

These are the only things the public report and the dashboard's public pages accept. They
hold released (noisy) numbers and public declarations, never a participant row or id.

A :class:`DPRelease` is one *suite*: every figure the sealed plan declares public, drawn
together under one ledger charge (all-or-nothing). A figure that would not be accurate
enough at its share of ε is still listed, with ``status="withheld"``, its reason and no
values, so a reader sees what was declared and why it is not shown.

The stored form of a release (``releases/<id>.json``) wraps it with the ledger stamp it was
charged under (:class:`LedgerStamp`): the entry's sequence number and keyed hash. A file
whose stamp does not match the ledger does not verify and is never shown.

This module imports only the standard library.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

RELEASE_FORMAT = "flourish-dp-release/2"
FigureKind = Literal["effect", "means"]
FigureStatus = Literal["released", "withheld"]
_DIGITS = 6


def round_floats(obj: Any) -> Any:
    """Round floats to 6 decimals (NaN/inf -> None), recursively; deterministic JSON input.

    Examples
    --------
    >>> round_floats({"a": [0.12345678, float("nan")], "b": -0.0})
    {'a': [0.123457, None], 'b': 0.0}
    """
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, numbers.Integral):  # numpy integers register here too
        return int(obj)
    if isinstance(obj, numbers.Real):
        x = float(obj)
        if not math.isfinite(x):
            return None
        r = round(x, _DIGITS)
        return 0.0 if r == 0 else r
    if isinstance(obj, Mapping):
        return {str(k): round_floats(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_floats(v) for v in obj]
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, floats rounded to 6 decimals: byte-stable JSON."""
    return json.dumps(round_floats(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True)
class DPFigure:
    """One declared public figure, released with its accuracy or withheld with a reason.

    Attributes
    ----------
    id
        Stable id from the declaration: ``effect:who5.total@4``, ``means:who5.total``.
    kind
        ``effect``: difference (treatment - control) in mean change from baseline to
        ``wave``, one value row. ``means``: mean per arm x wave, one row per cell.
    outcome
        ``instrument.scale``.
    instrument_title, scale_title, units
        Display names and units from the instrument definition (``points, 0-100``).
    lo, hi
        The scale's range (clipping bounds, from the instrument definition).
    role
        ``primary`` / ``secondary`` / ``guardrail`` from the plan's hypothesis, or
        ``descriptive`` for a figure no hypothesis names.
    hypothesis
        The plan's hypothesis id, if any.
    wave
        Follow-up wave of an effect (None for means).
    threshold
        Usefulness threshold in outcome units: the expected 95 % noise margin must not be
        wider (default: the hypothesis's minimal important difference).
    epsilon
        ε this figure used (0 when withheld).
    planned_margin
        Expected 95 % noise margin at ``epsilon`` and the declared expected n, computed
        before any data were read (outcome units).
    status, reason
        ``released``, or ``withheld`` with the reason in words.
    values
        Records. Effect: ``estimate, ci_low, ci_high, std_error, se_sampling, se_noise,
        noise_margin, n_treatment, n_control, mean_change_treatment, mean_change_control``.
        Means: ``arm, wave, mean, margin, n`` (margin: 95 % bound of the DP noise on the
        mean, covering the exact mean of the data).
    mid
        The outcome's minimal important difference (outcome units), when declared; the
        report compares effects with it (the usefulness threshold may be stricter).
    breakdown
        A declared covariate (e.g. ``country``): then every value row also has
        ``category``, one of the declared categories, and the rows are per category.
    """

    id: str
    kind: FigureKind
    outcome: str
    instrument_title: str
    scale_title: str
    units: str
    lo: float
    hi: float
    role: str
    hypothesis: str | None
    wave: int | None
    threshold: float
    epsilon: float
    planned_margin: float
    status: FigureStatus
    reason: str = ""
    values: tuple[dict[str, Any], ...] = ()
    mid: float | None = None
    breakdown: str | None = None

    @property
    def released(self) -> bool:
        """True when the figure carries values."""
        return self.status == "released"

    def to_frame(self):  # noqa: ANN201 - polars imported lazily (this module is stdlib-only)
        """The figure's values as a polars frame (empty when withheld)."""
        import polars as pl

        return pl.DataFrame(list(self.values), infer_schema_length=None)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        return {
            "id": self.id, "kind": self.kind, "outcome": self.outcome,
            "instrument_title": self.instrument_title, "scale_title": self.scale_title,
            "units": self.units, "lo": self.lo, "hi": self.hi, "role": self.role,
            "hypothesis": self.hypothesis, "wave": self.wave, "threshold": self.threshold,
            "epsilon": self.epsilon, "planned_margin": self.planned_margin,
            "status": self.status, "reason": self.reason, "values": [dict(v) for v in self.values],
            "mid": self.mid, "breakdown": self.breakdown,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DPFigure:
        """Inverse of :meth:`as_dict`."""
        return cls(**{**d, "values": tuple(d.get("values", ()))})


@dataclass(frozen=True)
class DPRelease:
    """One charged suite of DP figures: what the public report and pages show.

    Attributes
    ----------
    release_id
        sha256 of the canonical public declaration and the data version (hex); the ledger key.
    study
        The study's name (public).
    data_version
        Canonical hash of the participant-level public table (independent of the pseudonym
        key and of library versions).
    created_at
        UTC time the noise was drawn.
    epsilon
        ε charged for the whole suite (sum of the figures' ε).
    privacy
        ``definition``, ``unit``, ``mechanism``, ``accounting`` in words.
    alpha
        1 - confidence level of every margin and interval.
    arms
        ``{"control": label, "treatment": label}`` from the plan.
    waves
        The declared public waves.
    figures
        Declared figures in declaration order (released or withheld).
    spec
        The canonical public declaration the release was made from.
    """

    release_id: str
    study: str
    data_version: str
    created_at: str
    epsilon: float
    privacy: dict[str, str]
    alpha: float
    arms: dict[str, str]
    waves: tuple[int, ...]
    figures: tuple[DPFigure, ...]
    spec: dict[str, Any] = field(default_factory=dict)
    kind: str = "public_suite"

    def figure(self, figure_id: str) -> DPFigure:
        """The figure with this id (KeyError if absent)."""
        for f in self.figures:
            if f.id == figure_id:
                return f
        raise KeyError(figure_id)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        return {
            "format": RELEASE_FORMAT, "release_id": self.release_id, "kind": self.kind,
            "study": self.study, "data_version": self.data_version,
            "created_at": self.created_at, "epsilon": self.epsilon, "privacy": self.privacy,
            "alpha": self.alpha, "arms": self.arms, "waves": list(self.waves),
            "figures": [f.as_dict() for f in self.figures], "spec": self.spec,
        }

    def to_json(self) -> str:
        """Canonical JSON (byte-stable).

        Examples
        --------
        >>> r = DPRelease("id", "S", "v", "t", 1.0, {}, 0.05, {}, (0, 4), ())
        >>> DPRelease.from_json(r.to_json()).to_json() == r.to_json()
        True
        """
        return canonical_json(self.as_dict())

    @classmethod
    def from_json(cls, text: str) -> DPRelease:
        """Rebuild from :meth:`to_json` output."""
        d = json.loads(text)
        if d.get("format") != RELEASE_FORMAT:
            raise ValueError(f"not a {RELEASE_FORMAT} release (format {d.get('format')!r})")
        return cls(
            release_id=d["release_id"], study=d["study"], data_version=d["data_version"],
            created_at=d["created_at"], epsilon=float(d["epsilon"]), privacy=d["privacy"],
            alpha=float(d["alpha"]), arms=d["arms"], waves=tuple(d["waves"]),
            figures=tuple(DPFigure.from_dict(f) for f in d["figures"]), spec=d["spec"],
            kind=d.get("kind", "public_suite"),
        )


@dataclass(frozen=True)
class LedgerStamp:
    """The ledger entry a stored release (or a report) was made under.

    ``seq`` and ``entry_hash`` identify the entry; ``ledger_id`` identifies the ledger
    (its keyed genesis hash), so a file from another ledger is told apart.
    """

    ledger_id: str
    seq: int
    entry_hash: str

    def as_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return {"ledger_id": self.ledger_id, "seq": self.seq, "entry_hash": self.entry_hash}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LedgerStamp:
        """Inverse of :meth:`as_dict`."""
        return cls(str(d["ledger_id"]), int(d["seq"]), str(d["entry_hash"]))


@dataclass(frozen=True)
class StoredRelease:
    """A release as written to ``releases/<id>.json``: the release and its ledger stamp."""

    release: DPRelease
    stamp: LedgerStamp

    def to_json(self) -> str:
        """Canonical JSON of ``{"release": ..., "ledger": ...}``."""
        return canonical_json({"release": self.release.as_dict(), "ledger": self.stamp.as_dict()})

    @classmethod
    def from_json(cls, text: str) -> StoredRelease:
        """Parse a stored release file (ValueError when it is not one)."""
        try:
            d = json.loads(text)
            return cls(DPRelease.from_json(json.dumps(d["release"])),
                       LedgerStamp.from_dict(d["ledger"]))
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a stored Flourish release: {exc}") from None


def read_release_files(folder: Path | str) -> list[tuple[Path, StoredRelease | str]]:
    """Every ``*.json`` in a releases folder, parsed, or with the reason it does not parse.

    Sorted by name; a missing folder holds nothing. Verification against the ledger is
    :func:`verify_release_files`; this is what both it and the anchor collection read.
    """
    folder = Path(folder)
    out: list[tuple[Path, StoredRelease | str]] = []
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            out.append((path, StoredRelease.from_json(path.read_text(encoding="utf-8"))))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            out.append((path, f"not a stored Flourish release ({exc})"))
    return out


def verify_release_files(folder: Path | str, ledger: object
                         ) -> tuple[list[StoredRelease], list[tuple[str, str]]]:
    """Stored releases whose stamp ``ledger.verify_stored`` accepts, oldest first, and the rest.

    Returns ``(verified, rejected)``; each rejected file comes with its reason. A release
    stored twice (two files, one ledger entry) is listed once.
    """
    good: list[StoredRelease] = []
    rejected: list[tuple[str, str]] = []
    for path, item in read_release_files(folder):
        if isinstance(item, str):
            rejected.append((str(path), item))
            continue
        try:
            ok = bool(ledger.verify_stored(item.stamp, item.release.to_json()))  # type: ignore[attr-defined]
        except (ValueError, KeyError, RuntimeError) as exc:  # LedgerError is a RuntimeError
            rejected.append((str(path), f"cannot be checked against the ledger ({exc})"))
            continue
        if not ok:
            rejected.append((str(path), "its ledger stamp does not verify (not charged, or "
                                         "edited after release)"))
            continue
        good.append(item)
    good.sort(key=lambda r: r.stamp.seq)
    seen: set[str] = set()
    unique = [r for r in good
              if not (r.release.release_id in seen or seen.add(r.release.release_id))]
    return unique, rejected

