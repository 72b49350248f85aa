"""Conventions: pure domain packages, Dagster Definitions load, every asset described."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"dagster", "streamlit", "orchestration", "dashboards"}


@pytest.mark.parametrize("package", ["instruments", "models", "privacy"])
def test_domain_packages_are_pure(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path}: imports {name}"


def test_definitions_load_and_every_asset_is_described(demo_run: dict) -> None:
    from orchestration.definitions import build_definitions

    defs = build_definitions(demo_run["study"])
    graph = defs.resolve_asset_graph()
    keys = list(graph.get_all_asset_keys())
    assert len(keys) >= 15
    for key in keys:
        assert graph.get(key).description, f"{key} has no description"
    assert defs.resolve_job_def("study_job") is not None
    assert [s.name for s in defs.schedules] == ["daily_study_refresh"]
    assert [s.name for s in defs.sensors] == ["new_survey_files"]


def test_sensor_requests_a_run_only_when_survey_files_change(demo_run: dict, tmp_path: Path) -> None:
    import dagster as dg

    from orchestration.definitions import build_definitions

    defs = build_definitions(demo_run["study"])
    sensor = defs.sensors[0]
    context = dg.build_sensor_context(cursor=None)
    assert isinstance(sensor(context), dg.RunRequest)
    assert context.cursor
    again = sensor(dg.build_sensor_context(cursor=context.cursor))
    assert isinstance(again, dg.SkipReason)
