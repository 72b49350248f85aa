"""Run a whole study in-process on an embedded Dagster instance under its ``output_dir``.

A run tells the truth about what it produced (:class:`RunOutcome`): whether every step ran,
which step failed and on what underlying error (never Dagster's wrapper), which ERROR
severity (or blocking) asset checks failed, and which primary hypotheses have no estimate.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from orchestration.spec import load_study_spec

# Dagster's wrappers around the exception an op raised; the error the user should see is
# the first cause that is not one of these.
_WRAPPERS = frozenset({"DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError",
                       "DagsterExecutionHandleOutputError", "DagsterExecutionLoadInputError"})
_CHECK_FAILED = "DagsterAssetCheckFailedError"


@dataclass(frozen=True)
class StepError:
    """The underlying error a step failed on (Dagster's wrapper peeled off)."""

    step: str
    cls_name: str
    message: str
    chain: tuple[str, ...] = ()  # every class name along the cause chain, outermost first


@dataclass(frozen=True)
class CheckFailure:
    """An asset check that did not pass."""

    name: str  # asset.check
    severity: str  # ERROR | WARN
    detail: str = ""


@dataclass(frozen=True)
class RunOutcome:
    """What the run produced and whether it can be trusted.

    ``success`` means every step ran; ``trustworthy`` additionally that no ERROR-severity
    (or blocking) check failed and every primary hypothesis has an estimate.
    """

    success: bool
    summary_text: str
    failed_steps: tuple[str, ...] = ()
    errors: tuple[StepError, ...] = ()
    check_failures: tuple[CheckFailure, ...] = ()
    untrusted: tuple[str, ...] = field(default=())  # why the results are not trustworthy

    @property
    def trustworthy(self) -> bool:
        """Every step ran, no ERROR check failed, every primary hypothesis has an estimate."""
        return self.success and not self.untrusted


@contextmanager
def quiet_warnings() -> Iterator[None]:
    """Silence library warnings that say nothing to the user of a run.

    arviz warns "More chains (n) than draws (m)" whenever it converts a draw array with
    fewer draws than chains (the growth model's derived quantities, ``models/growth.py``);
    the diagnostics gate, not this warning, is what the user needs.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"More chains \(\d+\) than draws",
                                category=UserWarning)
        yield


def _peel(step: str, error: object) -> StepError:
    """The innermost non-wrapper error of a serialised Dagster error, message without prefix."""
    chain: list[object] = []
    node = error
    while node is not None:
        chain.append(node)
        node = getattr(node, "cause", None)
    names = tuple(str(getattr(e, "cls_name", "")) for e in chain)
    inner = next((e for e in chain if getattr(e, "cls_name", "") not in _WRAPPERS), chain[-1])
    cls_name = str(getattr(inner, "cls_name", "") or "")
    message = str(getattr(inner, "message", "") or "").strip()
    head, sep, rest = message.partition(": ")
    if sep and (head == cls_name or head.endswith("." + cls_name)):
        message = rest.strip()
    return StepError(step=step, cls_name=cls_name, message=message, chain=names)


def _primary_without_estimate(out: Path, since: float) -> list[str]:
    """Primary hypotheses this run left without an estimate (effects and posterior tables)."""
    import polars as pl

    reasons: list[str] = []
    path = out / "effects.parquet"
    if not path.exists() or path.stat().st_mtime < since:
        return reasons
    eff = pl.read_parquet(path)
    if "role" not in eff.columns or "estimate" not in eff.columns:
        return reasons
    post_path = out / "posterior.parquet"
    post = pl.read_parquet(post_path) if post_path.exists() else pl.DataFrame()
    fitted = set()
    if {"hypothesis", "parameter", "mean", "gate"} <= set(post.columns):
        fitted = set(post.filter((pl.col("parameter") == "slope_effect")
                                 & pl.col("mean").is_not_null() & (pl.col("gate") == "pass"))
                     ["hypothesis"].to_list())
    for r in eff.filter(pl.col("role") == "primary").iter_rows(named=True):
        if r.get("method") == "bayes_growth":
            if r["hypothesis"] in fitted:
                continue
            why = "no growth-model estimate that passed the diagnostics gate"
        elif r["estimate"] is not None:
            continue
        else:
            why = r.get("message") or "no estimate"
        reasons.append(f"primary hypothesis {r['hypothesis']} "
                       f"({r.get('instrument')}.{r.get('scale')}) has no estimate: {why}")
    return reasons


def _srm_detail(out: Path, since: float) -> str:
    """Observed/expected arm sizes of a failed sample-ratio check, and unplanned arms."""
    import polars as pl

    path = out / "sample_ratio.parquet"
    if not path.exists() or path.stat().st_mtime < since:
        return ""
    srm = pl.read_parquet(path)
    if not {"arm", "observed", "expected"} <= set(srm.columns):
        return ""
    sizes = ", ".join(f"{r['arm']} {r['observed']}/{r['expected']:.0f}"
                      for r in srm.iter_rows(named=True))
    text = f"; arm sizes observed/expected: {sizes}"
    unplanned = [str(r["arm"]) for r in srm.iter_rows(named=True)
                 if not r["expected"]]
    if unplanned:
        text += (f"; arm(s) {', '.join(unplanned)} not in the plan's allocation: those "
                 "participants are left out of the effects")
    return text


def run_study(spec_path: Path, *, progress: bool = True) -> RunOutcome:
    """Materialise every asset and asset check of the study; show a progress bar by step.

    The run is recorded in a persistent Dagster instance in ``<output_dir>/.dagster`` so
    ``dagster dev`` pointed at the same home shows its history.
    """
    import dagster as dg
    from tqdm import tqdm

    from orchestration.definitions import ALL_ASSETS_JOB, build_definitions
    from orchestration.report_text import format_run_summary

    spec = load_study_spec(spec_path)
    out = spec.output_path
    out.mkdir(parents=True, exist_ok=True)
    home = out / ".dagster"
    home.mkdir(exist_ok=True)
    started = time.time() - 1.0  # file mtimes may be coarser than the clock
    defs = build_definitions(spec_path)
    job = defs.resolve_job_def(ALL_ASSETS_JOB)
    n_steps = len(job.graph.node_defs)
    instance = dg.DagsterInstance.local_temp(tempdir=str(home))
    run_id = str(uuid.uuid4())
    failed: list[str] = []
    errors: list[StepError] = []
    checks: list[CheckFailure] = []
    bar = tqdm(total=n_steps, desc="flourish run", unit="step", disable=not progress)

    def on_event(entry: object) -> None:
        event = getattr(entry, "dagster_event", None)
        if event is None:
            message = getattr(entry, "user_message", "")
            step = getattr(entry, "step_key", None)
            if ("Not executing" in message or "Dependencies for step" in message
                    or "Error occurred while executing" in message):
                return  # the engine's skip/failure notes: the underlying error is reported
            if step and message and getattr(entry, "level", 0) >= 20 and progress:
                bar.write(f"  {step}: {message}")
            return
        kind = event.event_type_value
        if kind == "STEP_START":
            bar.set_postfix_str(event.step_key or "")
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED"):
            bar.update(1)
            if kind == "STEP_FAILURE":
                failed.append(event.step_key or "?")
                data = event.step_failure_data
                if data is not None and data.error is not None:
                    err = _peel(event.step_key or "?", data.error)
                    errors.append(err)
                    if progress:
                        bar.write(f"  FAILED {err.step}: {err.message}")
        elif kind == "ASSET_CHECK_EVALUATION":
            data = event.event_specific_data
            if data is not None and not data.passed:
                severity = getattr(getattr(data, "severity", None), "value", "ERROR")
                meta = {k: getattr(v, "value", v) for k, v in (data.metadata or {}).items()}
                detail = ", ".join(f"{k}={v}" for k, v in meta.items()
                                   if not isinstance(v, (list, dict)))
                checks.append(CheckFailure(
                    name=f"{data.asset_key.to_user_string()}.{data.check_name}",
                    severity=str(severity), detail=detail))

    instance.add_event_listener(run_id, on_event)
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    try:
        with quiet_warnings():
            job.execute_in_process(
                instance=instance, run_id=run_id, raise_on_error=False, run_config=quiet
            )
    finally:
        bar.close()
    # a blocking check that failed stops its step: that is an untrustworthy result, not a
    # pipeline failure
    blocked = [e for e in errors if _CHECK_FAILED in e.chain]
    broken = [e for e in errors if e not in blocked]
    failed_steps = [s for s in failed if s not in {e.step for e in blocked}]
    success = not failed_steps
    untrusted = [f"check {c.name} failed ({c.severity})" + (f": {c.detail}" if c.detail else "")
                 + (_srm_detail(out, started) if c.name.endswith("sample_ratio_mismatch") else "")
                 for c in checks if c.severity == "ERROR"]
    untrusted += [f"blocking check stopped step {e.step}: {e.message}" for e in blocked]
    untrusted += _primary_without_estimate(out, started)
    summary = format_run_summary(spec, success=success, failed_steps=failed_steps,
                                 since=started, problems=untrusted)
    return RunOutcome(
        success=success,
        summary_text=summary,
        failed_steps=tuple(failed_steps),
        errors=tuple(broken),
        check_failures=tuple(checks),
        untrusted=tuple(untrusted),
    )

