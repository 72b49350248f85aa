"""Human-readable text about the instrument library (``flourish instruments list / show ID``).

Pure string formatting of :class:`~instruments.definition.InstrumentSpec` objects, so the CLI
prints and tests compare without touching files or terminals.
"""

from __future__ import annotations

from instruments.definition import InstrumentLibrary, InstrumentSpec, ResponseScaleSpec

_COMMERCIAL: dict[str, str] = {
    "free": "commercial use free",
    "permission_required": "commercial use needs permission",
    "licence_required": "commercial use needs a licence",
}


def _fmt_number(x: float) -> str:
    return f"{x:g}"


def _fmt_response(r: ResponseScaleSpec) -> str:
    anchors = "; ".join(f"{k} = {v}" for k, v in sorted(r.anchors.items()))
    return f"{r.min}-{r.max}" + (f" ({anchors})" if anchors else "")


def _licence_line(spec: InstrumentSpec) -> str:
    lic = spec.licence
    parts = [lic.name, _COMMERCIAL[lic.commercial_use]]
    if lic.requires_citation:
        parts.append("citation required")
    if not lic.ships_items:
        parts.append("item wording not shipped (paraphrases)")
    return "; ".join(parts)


def format_instrument_list(library: InstrumentLibrary) -> str:
    """One line per instrument: id, name, version, item and scale counts, licence terms.

    For ``flourish instruments list``.

    Parameters
    ----------
    library
        The instruments to list (built-in plus any study folders).

    Returns
    -------
    str
        A fixed-width table, one instrument per line after a header, sorted by id; ends
        without a trailing newline.

    Examples
    --------
    >>> from instruments.definition import load_library
    >>> print(format_instrument_list(load_library().subset(["who5"])))  # doctest: +NORMALIZE_WHITESPACE
    id    name                    version items scales commercial use
    who5  WHO-5 Well-Being Index  1998    5     2      free
    """  # noqa: E501
    header = ("id", "name", "version", "items", "scales", "commercial use")
    rows = [header] + [
        (
            spec.id,
            spec.name,
            spec.version,
            str(len(spec.items)),
            str(len(spec.scales)),
            spec.licence.commercial_use.replace("_", " "),
        )
        for spec in (library[i] for i in library.ids())
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header) - 1)]
    lines = [
        " ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + " " + r[-1]
        for r in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def format_instrument(spec: InstrumentSpec) -> str:
    """Everything a user needs to know about one instrument, as plain text.

    For ``flourish instruments show ID``: id, name, version, licence and commercial use,
    recall period, response options with anchor labels, items (with reverse keying and any
    item-specific response options), scales with their rule, items, missing-item rule,
    multiplier/offset, score range, bands and minimal important difference, and the
    citation.

    Parameters
    ----------
    spec
        The instrument.

    Returns
    -------
    str
        Multi-line text without a trailing newline.

    Examples
    --------
    >>> from instruments.definition import load_library
    >>> text = format_instrument(load_library()["who5"])
    >>> print(text.splitlines()[0])
    who5: WHO-5 Well-Being Index (version 1998)
    >>> "total = 4 x sum(who5_1..who5_5)" in text
    True
    """
    lines = [f"{spec.id}: {spec.name} (version {spec.version})"]
    lines.append(f"Licence: {_licence_line(spec)}")
    if spec.licence.url:
        lines.append(f"  {spec.licence.url}")
    if spec.licence.notes:
        lines.append(f"  {spec.licence.notes}")
    if spec.recall_period:
        lines.append(f"Recall period: {spec.recall_period}")
    lines.append(f"Responses: {_fmt_response(spec.response)}")

    lines.append(f"Items ({len(spec.items)}):")
    width = max(len(it.id) for it in spec.items)
    for it in spec.items:
        flags = " [reverse keyed]" if it.reverse else ""
        lines.append(f"  {it.id.ljust(width)}  {it.text}{flags}")
        if it.response is not None and it.response != spec.response:
            lines.append(f"  {''.ljust(width)}  responses: {_fmt_response(it.response)}")

    lines.append(f"Scales ({len(spec.scales)}):")
    for s in spec.scales:
        lo, hi = spec.scale_range(s.id)
        items = _item_span(spec, s.items)
        formula = f"{s.rule}({items})"
        if s.multiplier != 1:
            formula = f"{_fmt_number(s.multiplier)} x {formula}"
        if s.offset:
            sign = "+" if s.offset > 0 else "-"
            formula = f"{formula} {sign} {_fmt_number(abs(s.offset))}"
        lines.append(f"  {spec.id}.{s.id}: {s.name}")
        lines.append(f"    {s.id} = {formula}; range {_fmt_number(lo)}-{_fmt_number(hi)}")
        n = len(s.items)
        if s.required_items == n:
            missing = f"scored only when all {n} items are answered"
        else:
            missing = f"scored when at least {s.required_items} of {n} items are answered"
            if s.rule == "sum":
                missing += " (sum prorated from the answered items, see score_responses)"
        lines.append(f"    {missing}")
        if s.bands:
            prev: float | None = None
            bands = []
            for b in s.bands:
                span = (
                    f"<= {_fmt_number(b.upper)}"
                    if prev is None
                    else (f"> {_fmt_number(prev)} and <= {_fmt_number(b.upper)}")
                )
                bands.append(f"{b.label} ({span})")
                prev = b.upper
            lines.append(f"    bands: {'; '.join(bands)}")
        mid = spec.minimal_important_difference.get(s.id)
        if mid is not None:
            lines.append(f"    minimal important difference: {_fmt_number(mid)}")
        if s.description:
            lines.append(f"    {s.description}")
    if spec.notes:
        lines.append(f"Notes: {spec.notes}")
    lines.append(f"Citation: {spec.citation}")
    return "\n".join(lines)


def _item_span(spec: InstrumentSpec, item_ids: list[str]) -> str:
    """``who5_1..who5_5`` for a run of consecutive items in published order, else a list."""
    order = [it.id for it in spec.items]
    pos = [order.index(i) for i in item_ids]
    if len(pos) > 2 and pos == list(range(pos[0], pos[0] + len(pos))):
        return f"{item_ids[0]}..{item_ids[-1]}"
    return ", ".join(item_ids)
