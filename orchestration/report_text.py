"""Plain-text summaries that the CLI prints (read from a study's outputs)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from orchestration.spec import StudySpec


def _rule(title: str) -> str:
    return f"\n{title}\n{'-' * len(title)}"


def format_validation_summary(summary: object, file_issues: pl.DataFrame | None, out: Path) -> str:
    """Counts in, accepted, quarantined (by reason) and coerced (by kind), and where they went."""
    d = summary.to_dict() if hasattr(summary, "to_dict") else dict(summary)  # type: ignore[call-overload]
    lines = [_rule("Validation"),
             f"rows in:      {d['rows_in']:>12,}",
             f"accepted:     {d['accepted']:>12,}  -> {out / 'responses.parquet'}",
             f"quarantined:  {d['quarantined']:>12,}  -> {out / 'quarantine.csv'}"]
    by_reason = d.get("by_reason") or {}
    for reason, n in sorted(by_reason.items(), key=lambda kv: -kv[1]):
        if n:
            lines.append(f"  {reason:<26}{n:>10,}")
    coerced = d.get("coerced_by_kind") or d.get("coerced") or {}
    if any(coerced.values()):
        lines.append("coerced (accepted after an explicit, reported fix):")
        for kind, n in sorted(coerced.items(), key=lambda kv: -kv[1]):
            if n:
                lines.append(f"  {kind:<26}{n:>10,}")
    if file_issues is not None and file_issues.height:
        lines.append("file issues:")
        for row in file_issues.iter_rows(named=True):
            lines.append(f"  {row['source']}: {row['reason']}")
    identifiers = d.get("identifiers_dropped") or []
    for item in identifiers:
        lines.append(f"direct identifier dropped: column '{item['column']}' ({item['kind']})")
    ok = d["rows_in"] == d["accepted"] + d["quarantined"]
    lines.append(f"row accounting: {d['rows_in']:,} = {d['accepted']:,} + {d['quarantined']:,}"
                 f" {'(adds up)' if ok else '(DOES NOT ADD UP)'}")
    return "\n".join(lines)


def _fresh(path: Path, since: float | None) -> bool:
    """The file exists and (when ``since`` is given) was written by this run."""
    return path.exists() and (since is None or path.stat().st_mtime >= since)


def _table(path: Path, since: float | None, needs: set[str]) -> pl.DataFrame | None:
    """The parquet table at ``path`` when fresh and holding the columns ``needs``, else None.

    A step with nothing to produce (no plan, no ``bayes_growth`` hypothesis, no telemetry)
    writes a zero-column frame: there is then nothing to summarise.
    """
    if not _fresh(path, since):
        return None
    schema = pl.read_parquet_schema(path)
    if not needs <= set(schema):
        return None
    return pl.read_parquet(path)


def _scores_by_arm(out: Path, since: float | None = None) -> str:
    scores = out / "scores.parquet"
    parts = out / "participants.parquet"
    if not (_fresh(scores, since) and _fresh(parts, since)):
        return ""
    if not ({"participant_id", "instrument", "scale", "wave", "score"}
            <= set(pl.read_parquet_schema(scores))
            and {"participant_id", "arm"} <= set(pl.read_parquet_schema(parts))):
        return ""
    table = (
        pl.scan_parquet(scores)
        .join(pl.scan_parquet(parts).select("participant_id", "arm"), on="participant_id")
        .filter(pl.col("scale").is_in(["total", "flourish_index"]))
        .group_by("instrument", "scale", "arm", "wave")
        .agg(pl.col("score").mean().round(2).alias("mean"), pl.col("score").count().alias("n"))
        .collect()
        .sort("instrument", "scale", "arm", "wave")
    )
    lines = [_rule("Mean scores by arm and wave")]
    for (inst, scale), grp in table.group_by(["instrument", "scale"], maintain_order=True):
        wide = grp.pivot(on="wave", index="arm", values="mean", sort_columns=True)
        lines.append(f"{inst}.{scale}")
        lines.append("  " + "arm".ljust(12) + "".join(f"{'w' + c:>8}" for c in wide.columns[1:]))
        for row in wide.iter_rows():
            lines.append("  " + str(row[0]).ljust(12)
                         + "".join(f"{v:>8.2f}" if v is not None else "       -" for v in row[1:]))
    return "\n".join(lines)


def _effects(out: Path, since: float | None = None) -> str:
    eff = _table(out / "effects.parquet", since, {"role", "hypothesis", "estimate"})
    if eff is None:
        return ""
    eff = eff.filter(pl.col("role") != "exploratory")
    if eff.height == 0:
        return ""
    lines = [_rule("Trial effects (pre-registered)")]

    def num(v: object, fmt: str = ".2f") -> str:
        return "-" if v is None else format(v, fmt)

    for r in eff.iter_rows(named=True):
        flag = f"  [{r['flag']}]" if r.get("flag") else ""
        outcome = f"{r['instrument']}.{r['scale']}"
        lines.append(
            f"  {r['hypothesis']:<5}{r['role']:<10}{r['method']:<13}{outcome:<42}"
            f"{num(r['estimate']):>8} [{num(r['ci_low'])}, {num(r['ci_high'])}]"
            f"  p_adj={num(r.get('p_adjusted'), '.3g')}  {r['plan_status']}{flag}"
        )
        if r["estimate"] is None and r["method"] != "bayes_growth":
            lines.append(f"       no estimate: {r.get('message') or 'unknown reason'}")
    return "\n".join(lines)


def _posterior(out: Path, since: float | None = None) -> str:
    post = _table(out / "posterior.parquet", since, {"parameter", "hypothesis", "gate", "mean"})
    if post is None:
        return ""
    post = post.filter(pl.col("parameter") == "slope_effect")
    if post.height == 0:
        return ""
    lines = [_rule("Bayesian growth (effect on the slope per wave)")]
    for r in post.iter_rows(named=True):
        if r["gate"] != "pass" or r["mean"] is None:
            lines.append(f"  {r['hypothesis']:<6}{r['parameter']:<16} FAILED the diagnostics gate")
            continue
        lines.append(
            f"  {r['hypothesis']:<6}{r['parameter']:<16}{r['mean']:>8.3f} "
            f"[{r['hdi_low']:.3f}, {r['hdi_high']:.3f}]  P(>0)={r['prob_positive']:.3f}"
            f"  gate={r['gate']}"
        )
    return "\n".join(lines)


def format_run_summary(spec: StudySpec, *, success: bool, failed_steps: list[str],
                       since: float | None = None, problems: Sequence[str] = ()) -> str:
    """The end-of-run summary: counts, quarantine, means by arm and wave, results, paths.

    Only outputs written since ``since`` (the run's start) are summarised, so a failed run
    never shows a previous run's results. ``problems`` are the reasons the results are not
    trustworthy (failed ERROR checks, primary hypotheses without an estimate).
    """
    out = spec.output_path
    status = "FAILED" if not success else ("NOT TRUSTWORTHY" if problems else "ok")
    parts = [f"\nStudy: {spec.name}  ({status})"]
    if failed_steps:
        parts.append("failed steps: " + ", ".join(failed_steps))
    if problems:
        parts.append("results produced but not trustworthy:")
        parts.extend(f"  - {p}" for p in problems)
    summary_path = out / "validation_summary.json"
    if _fresh(summary_path, since):
        summary = json.loads(summary_path.read_text())
        issues = pl.DataFrame(summary.get("file_issues") or [],
                              schema={"source": pl.String, "reason": pl.String})
        parts.append(format_validation_summary(summary, issues, out))
    for section in (_scores_by_arm(out, since), _effects(out, since), _posterior(out, since)):
        if section:
            parts.append(section)
    report = out / "report" / "index.html"
    parts.append(_rule("Outputs"))
    parts.append(f"  {out}")
    if report.exists() and (since is None or success):
        parts.append(f"  public report (DP releases only): {report}")
    return "\n".join(parts)
