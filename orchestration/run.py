"""Run a whole study in-process on an embedded Dagster instance under its ``output_dir``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from tqdm import tqdm

from orchestration.definitions import ALL_ASSETS_JOB, build_definitions
from orchestration.spec import load_study_spec


@dataclass(frozen=True)
class RunOutcome:
    """Whether the run succeeded, and the summary printed for the user."""

    success: bool
    summary_text: str
    failed_steps: tuple[str, ...] = ()


def run_study(spec_path: Path, *, progress: bool = True) -> RunOutcome:
    """Materialise every asset and asset check of the study; show a progress bar by step.

    The run is recorded in a persistent Dagster instance in ``<output_dir>/.dagster`` so
    ``dagster dev`` pointed at the same home shows its history.
    """
    from orchestration.report_text import format_run_summary

    spec = load_study_spec(spec_path)
    out = spec.output_path
    out.mkdir(parents=True, exist_ok=True)
    home = out / ".dagster"
    home.mkdir(exist_ok=True)
    defs = build_definitions(spec_path)
    job = defs.resolve_job_def(ALL_ASSETS_JOB)
    n_steps = len(job.graph.node_defs)
    instance = dg.DagsterInstance.local_temp(tempdir=str(home))
    run_id = str(uuid.uuid4())
    failed: list[str] = []
    bar = tqdm(total=n_steps, desc="flourish run", unit="step", disable=not progress)

    def on_event(entry: object) -> None:
        event = getattr(entry, "dagster_event", None)
        if event is None:
            message = getattr(entry, "user_message", "")
            step = getattr(entry, "step_key", None)
            if step and message and getattr(entry, "level", 0) >= 20 and progress:
                bar.write(f"  {step}: {message}")
            return
        kind = event.event_type_value
        if kind == "STEP_START":
            bar.set_postfix_str(event.step_key or "")
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            bar.update(1)
            if kind == "STEP_FAILURE":
                failed.append(event.step_key or "?")
                if event.step_failure_data and event.step_failure_data.error:
                    bar.write(f"  FAILED {event.step_key}: "
                              f"{event.step_failure_data.error.message.strip()}")

    instance.add_event_listener(run_id, on_event)
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    try:
        result = job.execute_in_process(
            instance=instance, run_id=run_id, raise_on_error=False, run_config=quiet
        )
    finally:
        bar.close()
    success = result.success and not failed
    return RunOutcome(
        success=success,
        summary_text=format_run_summary(spec, success=success, failed_steps=failed),
        failed_steps=tuple(failed),
    )
