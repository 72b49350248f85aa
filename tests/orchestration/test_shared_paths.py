"""Tests travel: the shared reference data is found relative to the repository root.

A fresh clone placed anywhere, with the shared folder beside it as ``../shared``, runs
the README test command; no test module may name a machine's absolute path.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _load_conftest(path: Path):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("conftest_copy", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_no_test_module_names_an_absolute_shared_path() -> None:
    offenders = []
    for path in TESTS.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if re.search(r"[\"'](/work/|/home/|/Users/)\S*shared", text):
            offenders.append(str(path.relative_to(TESTS)))
    assert offenders == []


def test_shared_data_is_found_beside_a_clone_placed_anywhere(tmp_path: Path) -> None:
    clone = tmp_path / "somewhere" / "flourish"
    (clone / "tests").mkdir(parents=True)
    shutil.copy(TESTS / "conftest.py", clone / "tests" / "conftest.py")
    (tmp_path / "somewhere" / "shared" / "data").mkdir(parents=True)
    module = _load_conftest(clone / "tests" / "conftest.py")
    assert module.SHARED_DATA == (tmp_path / "somewhere" / "shared" / "data").resolve()
    assert module.SHARED_DATA.is_dir()


def test_this_checkout_finds_the_reference_files(shared_data: Path) -> None:
    from conftest import SHARED_DATA

    assert shared_data == SHARED_DATA
    assert shared_data == (TESTS.parent / ".." / "shared" / "data").resolve()
