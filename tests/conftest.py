"""Session fixtures: one small demo study, run once through the whole pipeline (seeded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DEMO_PARTICIPANTS = 400

#: The shared reference data (R/lme4/psych outputs), found relative to the repository root:
#: a clone placed anywhere works with the shared folder beside it as ``../shared``.
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = (REPO_ROOT / ".." / "shared").resolve()
SHARED_DATA = SHARED_DIR / "data"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A demo study written, sealed and run end to end through Dagster; its paths and truth."""
    from models.plan import lock_plan
    from orchestration.demo import DemoStudyConfig, write_demo_study
    from orchestration.run import run_study

    out = tmp_path_factory.mktemp("demo")
    demo = write_demo_study(out, DemoStudyConfig(n_participants=DEMO_PARTICIPANTS, seed=7))
    lock_plan(demo.plan_path, outcome_rows=0)
    outcome = run_study(demo.study_path, progress=False)
    return {
        "study": Path(demo.study_path),
        "plan": Path(demo.plan_path),
        "out": Path(demo.study_path).parent / "out",
        "truth": json.loads(Path(demo.truth_path).read_text()),
        "outcome": outcome,
    }


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared reference data folder (``../shared/data`` beside the repository)."""
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _restore_main_module():
    """Streamlit's AppTest runs app scripts as ``__main__``; put the real one back after each
    test, or later ``multiprocessing`` spawn children would re-run the dashboard script."""
    import sys

    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main
