"""Instrument definitions as data: the pydantic model every instrument file is loaded into.

An instrument is one YAML (or TOML) file. Adding an instrument never needs code: drop a
file in a folder that the study spec names under ``[instruments] paths``. Files are
validated on load and a malformed file raises :class:`InstrumentDefinitionError`
naming the file and the offending field.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

ScoringRule = Literal["sum", "mean"]
Transform = Literal["none", "linear"]

BUILTIN_DIR = Path(__file__).parent / "definitions"


class InstrumentDefinitionError(ValueError):
    """A definition file is malformed; the message names the file and the field."""

    def __init__(self, path: Path | str, field: str, message: str) -> None:
        self.path = str(path)
        self.field = field
        super().__init__(f"{path}: field '{field}': {message}")


class _FieldError(ValueError):
    """A validator's error that knows which field (dotted, relative to the model) is wrong.

    Model-level validators otherwise report the model itself (``<root>``); carrying the field
    lets :func:`load_instrument` name ``scales.1.items`` instead.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResponseScaleSpec(_Strict):
    """Integer response options ``min..max`` with their anchor labels (value -> label)."""

    min: int
    max: int
    anchors: dict[int, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> ResponseScaleSpec:
        if self.max <= self.min:
            raise _FieldError("max", f"max ({self.max}) must exceed min ({self.min})")
        bad = [k for k in self.anchors if not self.min <= k <= self.max]
        if bad:
            raise _FieldError("anchors", f"anchor values {bad} lie outside {self.min}..{self.max}")
        return self


class ItemSpec(_Strict):
    """One item. ``text`` is the wording, or a short paraphrase where the licence forbids it."""

    id: str = Field(pattern=r"^[a-z][a-z0-9]*_[0-9]+$")
    text: str
    reverse: bool = False
    response: ResponseScaleSpec | None = None  # overrides the instrument's default scale


class BandSpec(_Strict):
    """An interpretation band on a scale's final score.

    Bands are listed in ascending order; a score belongs to the first band whose inclusive
    ``upper`` bound it does not exceed (WHO-5: ``<= 28`` likely depression, ``<= 50`` poor
    wellbeing, ``<= 100`` otherwise).
    """

    label: str
    upper: float


class ScaleSpec(_Strict):
    """A scored scale: a domain or a total.

    ``score = multiplier * rule(items after reverse keying) + offset``, computed only when at
    least ``min_items`` of its items were answered (default: all of them).
    """

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    name: str
    items: list[str] = Field(min_length=1)
    rule: ScoringRule
    min_items: int | None = None
    multiplier: float = 1.0
    offset: float = 0.0
    description: str = ""
    bands: list[BandSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> ScaleSpec:
        if len(set(self.items)) != len(self.items):
            raise _FieldError("items", "items repeat")
        if self.min_items is not None and not 1 <= self.min_items <= len(self.items):
            raise _FieldError("min_items", f"min_items must lie in 1..{len(self.items)}")
        uppers = [b.upper for b in self.bands]
        if uppers != sorted(uppers) or len(set(uppers)) != len(uppers):
            raise _FieldError(
                "bands", "bands must be listed with strictly ascending 'upper' bounds"
            )
        return self

    @property
    def required_items(self) -> int:
        """Minimum number of answered items for the scale to be scored."""
        return len(self.items) if self.min_items is None else self.min_items


class LicenceSpec(_Strict):
    """Terms of use. ``ships_items`` is false where Flourish may not ship the wording."""

    name: str
    url: str = ""
    commercial_use: Literal["free", "permission_required", "licence_required"] = "free"
    requires_citation: bool = True
    ships_items: bool = True
    notes: str = ""


class InstrumentSpec(_Strict):
    """A validated instrument definition."""

    id: str = Field(pattern=r"^[a-z][a-z0-9]*$")
    name: str
    version: str
    citation: str
    licence: LicenceSpec
    recall_period: str = ""
    response: ResponseScaleSpec
    items: list[ItemSpec] = Field(min_length=1)
    scales: list[ScaleSpec] = Field(min_length=1)
    minimal_important_difference: dict[str, float] = Field(default_factory=dict)
    notes: str = ""

    @model_validator(mode="after")
    def _check(self) -> InstrumentSpec:
        ids = [i.id for i in self.items]
        for n, i in enumerate(ids):
            if i in ids[:n]:
                raise _FieldError(f"items.{n}.id", f"item id '{i}' repeats")
            if not i.startswith(f"{self._prefix()}_"):
                raise _FieldError(
                    f"items.{n}.id", f"item id '{i}' must start with '{self._prefix()}_'"
                )
        scale_ids = [s.id for s in self.scales]
        for n, sid in enumerate(scale_ids):
            if sid in scale_ids[:n]:
                raise _FieldError(f"scales.{n}.id", f"scale id '{sid}' repeats")
        known = set(ids)
        for n, s in enumerate(self.scales):
            unknown = [i for i in s.items if i not in known]
            if unknown:
                raise _FieldError(
                    f"scales.{n}.items", f"scale '{s.id}' names unknown items {unknown}"
                )
        for n, s in enumerate(self.scales):
            # Every possible final score must fall in a band, else the top scores get none.
            lo, hi = self.scale_range(s.id)
            if s.bands and s.bands[-1].upper < hi:
                raise _FieldError(
                    f"scales.{n}.bands",
                    f"the last band's upper bound {s.bands[-1].upper:g} lies below the scale's "
                    f"maximum {hi:g}, so the highest scores would have no band",
                )
            if s.bands and s.bands[0].upper < lo:
                raise _FieldError(
                    f"scales.{n}.bands",
                    f"the first band's upper bound {s.bands[0].upper:g} lies below the scale's "
                    f"minimum {lo:g}, so no score can fall in it",
                )
        for key in self.minimal_important_difference:
            if key not in scale_ids:
                raise _FieldError(
                    f"minimal_important_difference.{key}",
                    f"minimal_important_difference names unknown scale '{key}'",
                )
        return self

    def _prefix(self) -> str:
        # Item ids are global and instrument-prefixed; the prefix is the id of the
        # instrument's item stem (``flourish12`` uses ``flourish_``), declared per file.
        return self.items[0].id.rsplit("_", 1)[0]

    @property
    def item_prefix(self) -> str:
        """The stem shared by this instrument's item ids (``who5``, ``flourish``, ...)."""
        return self._prefix()

    def item(self, item_id: str) -> ItemSpec:
        """The item with id ``item_id``."""
        for it in self.items:
            if it.id == item_id:
                return it
        raise KeyError(item_id)

    def scale(self, scale_id: str) -> ScaleSpec:
        """The scale with id ``scale_id`` (without the instrument prefix)."""
        for s in self.scales:
            if s.id == scale_id:
                return s
        raise KeyError(scale_id)

    def item_range(self, item_id: str) -> tuple[int, int]:
        """Response range ``(min, max)`` of an item (its own, else the instrument's)."""
        r = self.item(item_id).response or self.response
        return r.min, r.max

    def scale_range(self, scale_id: str) -> tuple[float, float]:
        """The possible range of a scale's final score, from its items' ranges."""
        s = self.scale(scale_id)
        lows = [self.item_range(i)[0] for i in s.items]
        highs = [self.item_range(i)[1] for i in s.items]
        if s.rule == "sum":
            lo, hi = float(sum(lows)), float(sum(highs))
        else:
            lo, hi = float(min(lows)), float(max(highs))
        a, b = s.multiplier * lo + s.offset, s.multiplier * hi + s.offset
        return (min(a, b), max(a, b))


@dataclass(frozen=True)
class InstrumentLibrary:
    """The instruments a study may use, keyed by id, with a global item index."""

    instruments: Mapping[str, InstrumentSpec]
    sources: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for inst in self.instruments.values():
            for it in inst.items:
                if it.id in seen:
                    raise InstrumentDefinitionError(
                        self.sources.get(inst.id, inst.id),
                        "items",
                        f"item id '{it.id}' is already defined by instrument '{seen[it.id]}'",
                    )
                seen[it.id] = inst.id

    def __getitem__(self, instrument_id: str) -> InstrumentSpec:
        return self.instruments[instrument_id]

    def __contains__(self, instrument_id: object) -> bool:
        return instrument_id in self.instruments

    def __iter__(self) -> Iterator[InstrumentSpec]:
        return iter(self.instruments.values())

    def ids(self) -> list[str]:
        """Instrument ids, sorted."""
        return sorted(self.instruments)

    def subset(self, ids: Iterable[str]) -> InstrumentLibrary:
        """A library of only ``ids`` (unknown ids raise ``KeyError``)."""
        ids = list(ids)
        return InstrumentLibrary(
            {i: self.instruments[i] for i in ids},
            {i: self.sources[i] for i in ids if i in self.sources},
        )

    def instrument_of_item(self, item_id: str) -> str | None:
        """The instrument that defines ``item_id``, or None."""
        for inst in self.instruments.values():
            if any(it.id == item_id for it in inst.items):
                return inst.id
        return None

    def item_table(self) -> list[dict[str, object]]:
        """One record per item: instrument, item, min, max, reverse (for joins in polars)."""
        rows: list[dict[str, object]] = []
        for inst in self.instruments.values():
            for it in inst.items:
                lo, hi = inst.item_range(it.id)
                rows.append(
                    {
                        "instrument": inst.id,
                        "item": it.id,
                        "min": lo,
                        "max": hi,
                        "reverse": it.reverse,
                    }
                )
        return rows


def _read_mapping(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InstrumentDefinitionError(path, "<file>", f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        message = str(exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:  # YAML: name the line and column (1-based) of the problem
            problem = getattr(exc, "problem", None) or message
            message = f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
        raise InstrumentDefinitionError(path, "<syntax>", message) from None
    if not isinstance(data, dict):
        raise InstrumentDefinitionError(path, "<root>", "expected a mapping of fields")
    return data


def load_instrument(path: Path | str) -> InstrumentSpec:
    """Load and validate one instrument file (``.yaml``, ``.yml`` or ``.toml``).

    Raises
    ------
    InstrumentDefinitionError
        Naming the file and the first invalid field (dotted path, e.g. ``scales.2.items``).
    """
    path = Path(path)
    data = _read_mapping(path)
    try:
        return InstrumentSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        parts = [str(p) for p in err["loc"]]
        message = err["msg"]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _FieldError):
            parts.append(cause.field)
            message = str(cause)
        loc = ".".join(parts) or "<root>"
        raise InstrumentDefinitionError(path, loc, message) from None


def _definition_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in {".yaml", ".yml", ".toml"})


def load_library(
    extra_dirs: Iterable[Path | str] = (), *, builtin: bool = True
) -> InstrumentLibrary:
    """Load the built-in instruments plus every definition file in ``extra_dirs``.

    A study's own instrument may not reuse a built-in id or item id.
    """
    found: dict[str, InstrumentSpec] = {}
    sources: dict[str, str] = {}
    folders = ([BUILTIN_DIR] if builtin else []) + [Path(d) for d in extra_dirs]
    for folder in folders:
        if not folder.is_dir():
            raise InstrumentDefinitionError(folder, "<folder>", "instrument folder not found")
        for path in _definition_files(folder):
            inst = load_instrument(path)
            if inst.id in found:
                raise InstrumentDefinitionError(
                    path, "id", f"instrument '{inst.id}' is already defined in {sources[inst.id]}"
                )
            found[inst.id] = inst
            sources[inst.id] = str(path)
    return InstrumentLibrary(found, sources)
