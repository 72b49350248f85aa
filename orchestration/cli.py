"""The ``flourish`` command line (see README, "CLI reference").

Exit codes follow DESIGN.md: 0 ok; 1 a pipeline failure; 2 unusable input (missing file,
bad spec); 3 rows quarantined (validate/score); 4 a deviated analysis plan (prereg verify);
5 results produced but not trustworthy (``run``/``demo``: every step ran, but an
ERROR-severity or blocking asset check failed — e.g. a sample-ratio mismatch from arm labels
the plan does not know — or a primary hypothesis has no estimate; the summary says which
and why). ``run`` exits 0 only when every step ran and nothing of the kind happened.
A user mistake prints one clear message naming file, row and column where there is one —
the same message ``validate`` gives, also when a ``run`` step hits it — never a traceback.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE, EXIT_QUARANTINED, EXIT_DEVIATED = 0, 1, 2, 3, 4
EXIT_UNTRUSTED = 5


_USER_ERROR_CLASSES = (
    ("instruments.definition", "InstrumentDefinitionError"),
    ("orchestration.readers", "IngestError"),
    ("orchestration.spec", "StudySpecError"),
    ("privacy.keys", "KeySourceError"),
    ("models.plan", "AnalysisPlanError"),
    # polars' ComputeError here means an input file polars cannot parse (ragged CSV rows,
    # not UTF-8); KeySourceError a named key source that is missing or too short.
    ("polars.exceptions", "ComputeError"),
)
USER_ERROR_NAMES = frozenset({"FileNotFoundError", "PlanError"}
                             | {name for _, name in _USER_ERROR_CLASSES})
"""Class names of the exceptions that mean "the user's input is wrong" (exit 2)."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the user's input is wrong" (printed, never traced).

    Only modules already imported are consulted: an exception can only have been raised
    by a module that was loaded, and importing the rest here would slow every command.
    """
    errors: list[type[BaseException]] = [FileNotFoundError]
    for module, name in _USER_ERROR_CLASSES:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            errors.append(cls)
    return tuple(errors)


def _fail(message: str, code: int = EXIT_UNUSABLE) -> int:
    print(f"flourish: error: {message}", file=sys.stderr)
    return code


# ---------------------------------------------------------------- validate / score


def _print_validation(summary: object, file_issues: object, out: Path) -> None:
    from orchestration.report_text import format_validation_summary

    print(format_validation_summary(summary, file_issues, out))


def cmd_validate(args: argparse.Namespace, *, with_scores: bool = False) -> int:
    """Ingest and validate (and optionally score) a study."""
    from orchestration import pipeline

    study = pipeline.load_study(args.study)
    result = pipeline.ingest_study(study)
    pipeline.write_ingest_outputs(study, result)
    _print_validation(result.validation.summary, result.file_issues, study.out)
    if with_scores:
        scores = pipeline.score_study(study, result.validation.responses)
        scores.write_parquet(study.out / "scores.parquet")
        print(f"scores: {scores.height:,} rows -> {study.out / 'scores.parquet'}")
    # quarantined rows, or a blocking file issue (an empty or header-only survey file)
    needs = result.validation.summary.quarantined or result.needs_attention
    return EXIT_QUARANTINED if needs else EXIT_OK


# ---------------------------------------------------------------- run / demo


def _report_run(outcome: object) -> int:
    """Print a run's outcome and choose the exit code (0, 1, 2 or 5; see the module doc).

    A step that failed on a user mistake prints the underlying message (as ``validate``
    would) and nothing else: no Dagster wrapper, no summary.
    """
    errors = list(getattr(outcome, "errors", ()))
    if errors and all(e.cls_name in USER_ERROR_NAMES for e in errors):
        seen: set[str] = set()
        for e in errors:
            if e.message not in seen:
                seen.add(e.message)
                _fail(e.message)
        return EXIT_UNUSABLE
    print(outcome.summary_text)  # type: ignore[attr-defined]
    if not outcome.success:  # type: ignore[attr-defined]
        for e in errors:
            _fail(f"step {e.step} failed: {e.cls_name}: {e.message}", EXIT_FAILED)
        return EXIT_FAILED
    untrusted = list(getattr(outcome, "untrusted", ()))
    if untrusted:
        return _fail(f"results produced but not trustworthy ({len(untrusted)} problem(s), "
                     "listed in the summary above)", EXIT_UNTRUSTED)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Materialise every asset of the study on an embedded Dagster instance."""
    from orchestration.run import run_study

    outcome = run_study(Path(args.study), progress=not args.quiet)
    return _report_run(outcome)


def _dashboard_hint(study_path: Path) -> str:
    """The command that opens the dashboard, runnable as printed."""
    import shutil

    prefix = "flourish" if shutil.which("flourish") else "uv run flourish"
    return f"{prefix} dashboard {study_path}"


def cmd_demo(args: argparse.Namespace) -> int:
    """Write a synthetic study with known truth and run the whole pipeline on it."""
    from orchestration.demo import DemoStudyConfig, write_demo_study
    from orchestration.run import run_study

    started = time.perf_counter()
    out = Path(args.out).resolve()
    config = DemoStudyConfig(n_participants=args.participants, seed=args.seed)
    demo = write_demo_study(out, config)
    from models.plan import lock_plan

    lock_plan(demo.plan_path, outcome_rows=0)  # sealed before any outcome is analysed
    print(f"demo study written to {out} ({args.participants} participants, seed {args.seed})")
    outcome = run_study(demo.study_path, progress=not args.quiet)
    code = _report_run(outcome)
    if code in (EXIT_OK, EXIT_UNTRUSTED):
        print(f"\ndone in {time.perf_counter() - started:.1f} s. Open the dashboard with:\n"
              f"  {_dashboard_hint(demo.study_path)}")
    return code


# ---------------------------------------------------------------- prereg


def cmd_prereg(args: argparse.Namespace) -> int:
    """Seal (lock) an analysis plan or verify it against its seal."""
    from models.plan import lock_plan, verify_plan

    plan = Path(args.plan)
    if args.action == "lock":
        outcome_rows = 0
        if args.study:
            from orchestration.pipeline import count_outcome_rows, load_study

            outcome_rows = count_outcome_rows(load_study(args.study))
        lock = lock_plan(plan, outcome_rows=outcome_rows)
        print(f"sealed {plan}\n  sha256 {lock.sha256}\n  at {lock.locked_at}\n"
              f"  outcome rows present when sealed: {lock.outcome_rows}")
        return EXIT_OK
    check = verify_plan(plan)
    if check.status == "intact":
        print(f"{plan}: intact (sha256 {check.sha256})")
        return EXIT_OK
    if check.status == "unlocked":
        return _fail(f"{plan}: not sealed; run `flourish prereg lock {plan}` first")
    print(f"{plan}: DEVIATED from its seal\n  sealed  {check.locked_sha256}\n"
          f"  now     {check.sha256}\n{check.diff}")
    return EXIT_DEVIATED


# ---------------------------------------------------------------- privacy


def cmd_release(args: argparse.Namespace) -> int:
    """Make the study's DP release suite and render the public report (or plan it)."""
    from orchestration.public import ReleaseRefused, dry_run, release_and_report
    from privacy.ledger import LedgerError

    try:
        if args.dry_run:
            print(dry_run(Path(args.study)))
            return EXIT_OK
        outcome = release_and_report(Path(args.study))
    except (ReleaseRefused, LedgerError) as refused:
        return _fail(f"release refused: {refused}", EXIT_FAILED)
    print(outcome)
    return EXIT_OK


def cmd_ledger(args: argparse.Namespace) -> int:
    """Show the study's privacy-budget ledger; exit 1 when it does not verify."""
    from orchestration.public import format_ledger
    from privacy.ledger import LedgerError

    try:
        text, ok = format_ledger(Path(args.study))
    except LedgerError as exc:
        return _fail(f"ledger refused: {exc}", EXIT_FAILED)
    print(text)
    return EXIT_OK if ok else EXIT_FAILED


# ---------------------------------------------------------------- dashboard / instruments


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Start the Streamlit dashboard on the study's outputs."""
    from orchestration.spec import load_study_spec

    spec_path = Path(args.study).resolve()
    load_study_spec(spec_path)  # fail early, with a clear message, on a bad spec
    app = Path(__file__).resolve().parent.parent / "dashboards" / "app.py"
    env = {**os.environ, "FLOURISH_STUDY": str(spec_path)}
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    print(f"dashboard on http://localhost:{args.port} (Ctrl-C to stop)")
    return subprocess.call(cmd, env=env)


def cmd_instruments(args: argparse.Namespace) -> int:
    """List the instrument library or show one instrument."""
    from instruments.catalog import format_instrument, format_instrument_list
    from instruments.definition import load_library

    extra: list[Path] = []
    if args.study:
        from orchestration.spec import load_study_spec

        extra = list(load_study_spec(args.study).instrument_dirs)
    library = load_library(extra)
    if args.action == "list":
        print(format_instrument_list(library))
        return EXIT_OK
    if args.id not in library:
        return _fail(f"unknown instrument '{args.id}'; known: {', '.join(library.ids())}")
    print(format_instrument(library[args.id]))
    return EXIT_OK


# ---------------------------------------------------------------- parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flourish")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``flourish`` command."""
    p = argparse.ArgumentParser(prog="flourish", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"flourish {_version()}",
                   help="print the package version and exit")
    sub = p.add_subparsers(dest="command", required=True)
    spec_help = "the study's study.toml"
    quiet_help = "no progress bar or step log; print only the summary"

    d = sub.add_parser("demo", help="write a synthetic study and run the whole pipeline")
    d.add_argument("--participants", type=int, default=1000,
                   help="participants to simulate (default 1000)")
    d.add_argument("--out", default="flourish-demo",
                   help="folder to write the demo study into (default flourish-demo)")
    d.add_argument("--seed", type=int, default=20261129, help="random seed (default 20261129)")
    d.add_argument("--quiet", action="store_true", help=quiet_help)
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="materialise every asset of a study; exit 0 ok, 1 a step "
                       "failed, 2 a user mistake, 5 results produced but not trustworthy")
    r.add_argument("study", help=spec_help)
    r.add_argument("--quiet", action="store_true", help=quiet_help)
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="ingest + validate; exit 3 when rows were quarantined")
    v.add_argument("study", help=spec_help)
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("score", help="validate + score")
    s.add_argument("study", help=spec_help)
    s.set_defaults(func=lambda a: cmd_validate(a, with_scores=True))

    pr = sub.add_parser("prereg", help="seal or verify an analysis plan")
    pr.add_argument("action", choices=["lock", "verify"],
                    help="lock: seal the plan; verify: check it against its seal (exit 4 "
                    "when deviated)")
    pr.add_argument("plan", help="the analysis plan (YAML)")
    pr.add_argument("--study", help="count the outcome rows present when sealing")
    pr.set_defaults(func=cmd_prereg)

    rel = sub.add_parser("release", help="make the declared DP release suite and the public "
                         "report; exit 1 when refused (budget, ledger), 2 on a user mistake")
    rel.add_argument("study", help=spec_help)
    rel.add_argument("--dry-run", action="store_true",
                     help="print each declared figure's ε and expected 95%% accuracy; spend nothing")
    rel.set_defaults(func=cmd_release)

    led = sub.add_parser("ledger", help="show and verify the privacy-budget ledger; exit 1 "
                         "on any inconsistency")
    led.add_argument("study", help=spec_help)
    led.set_defaults(func=cmd_ledger)

    db = sub.add_parser("dashboard", help="open the Streamlit dashboard")
    db.add_argument("study", help=spec_help)
    db.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    db.set_defaults(func=cmd_dashboard)

    ins = sub.add_parser("instruments", help="the instrument library")
    ins.add_argument("action", choices=["list", "show"],
                     help="list: every instrument; show: one instrument in full")
    ins.add_argument("id", nargs="?", help="the instrument id (for show), e.g. who5")
    ins.add_argument("--study", help="include the study's own instrument folders")
    ins.set_defaults(func=cmd_instruments)
    return p


def _dispatch(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "action", None) == "show" and not args.id:
        return _fail("instruments show needs an instrument id")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except _user_errors() as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_FAILED)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Warnings meant for the user (a weak ε, say) as one line, without a source excerpt."""
    print(f"flourish: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flourish`` console script."""
    import warnings

    warnings.showwarning = _show_warning
    try:
        code = _dispatch(argv)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        # the reader went away (``flourish ledger ... | head -1``): stop quietly; Python's
        # own exit-time flush must not raise again, so stdout now points at devnull
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
