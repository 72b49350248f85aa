"""The budget ledger: atomic charges, caching, refusal, concurrency, crashes, tampering."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _ledger_workers import release_worker

from privacy.ledger import BudgetExceededError, LedgerError, PrivacyLedger


def test_charge_cache_and_summary(tmp_path):
    led = PrivacyLedger(tmp_path / "l.sqlite", 2.0)
    calls = []

    def compute():
        calls.append(1)
        return '{"v": 1}'

    first = led.charge_and_record("r1", "count", "v1", 0.75, compute)
    second = led.charge_and_record("r1", "count", "v1", 0.75, compute)
    assert (first.status, second.status) == ("charged", "cached")
    assert len(calls) == 1  # no fresh noise on the second request
    assert second.entry == first.entry
    s = led.summary()
    assert (s.spent, s.remaining, s.n_releases, s.verified) == (0.75, 1.25, 1, True)
    assert s.to_frame()["release_id"].to_list() == ["r1"]


def test_overspend_refused_and_nothing_stored(tmp_path):
    led = PrivacyLedger(tmp_path / "l.sqlite", 1.0)
    led.charge_and_record("a", "count", "v1", 0.6, lambda: "{}")
    called = []
    with pytest.raises(BudgetExceededError) as info:
        led.charge_and_record("b", "count", "v1", 0.5, lambda: called.append(1) or "{}")
    assert not called  # the noise is never drawn for a refused release
    assert info.value.remaining == pytest.approx(0.4)
    assert "0.4" in str(info.value)
    assert led.get("b") is None and led.spent() == pytest.approx(0.6)
    # exactly the remainder is still allowed
    led.charge_and_record("c", "count", "v1", 0.4, lambda: "{}")
    assert led.spent() == pytest.approx(1.0)


def test_budget_fixed_at_creation(tmp_path):
    PrivacyLedger(tmp_path / "l.sqlite", 1.0)
    with pytest.raises(LedgerError):
        PrivacyLedger(tmp_path / "l.sqlite", 5.0)


def test_append_only_triggers(tmp_path):
    led = PrivacyLedger(tmp_path / "l.sqlite", 1.0)
    led.charge_and_record("a", "count", "v1", 0.5, lambda: "{}")
    con = sqlite3.connect(tmp_path / "l.sqlite")
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("UPDATE entries SET epsilon = 0.0")
    with pytest.raises(sqlite3.IntegrityError):
        con.execute("DELETE FROM entries")
    con.close()


def _tamper(path: Path, sql: str) -> None:
    con = sqlite3.connect(path)
    con.executescript(
        "DROP TRIGGER entries_no_update; DROP TRIGGER entries_no_delete;"
        "DROP TRIGGER meta_no_update;" + sql
    )
    con.close()


@pytest.mark.parametrize(
    ("sql", "needle"),
    [
        ("UPDATE entries SET epsilon = 0.01 WHERE seq = 2;", "seq 2: contents"),
        ("UPDATE entries SET payload = '{\"n\": 5}' WHERE seq = 1;", "seq 1: contents"),
        ("DELETE FROM entries WHERE seq = 2;", "seq 3"),
        ("UPDATE meta SET value = '100.0' WHERE key = 'budget';", "genesis"),
    ],
)
def test_tampering_detected(tmp_path, sql, needle):
    path = tmp_path / "l.sqlite"
    led = PrivacyLedger(path, 3.0)
    for i in range(3):
        led.charge_and_record(f"r{i}", "count", "v1", 0.5, lambda: '{"n": 1}')
    assert led.verify().ok
    _tamper(path, sql)
    check = PrivacyLedger.__new__(PrivacyLedger)
    check.path, check.timeout_s, check.budget = path, 10.0, 3.0
    result = check.verify()
    assert not result.ok
    assert any(needle in p for p in result.problems), result.problems


def test_concurrent_processes_never_overspend(tmp_path):
    path = str(tmp_path / "l.sqlite")
    PrivacyLedger(path, 3.0)
    ctx = mp.get_context("spawn")
    n = 6
    barrier = ctx.Manager().Barrier(n)
    # six distinct releases of epsilon 1 against a budget of 3, plus overlap: r0 twice
    jobs = [(path, 3.0, f"r{i}", 1.0, barrier) for i in range(n - 1)] + [
        (path, 3.0, "r0", 1.0, barrier)
    ]
    with ctx.Pool(n) as pool:
        statuses = pool.starmap(release_worker, jobs)
    led = PrivacyLedger(path, 3.0)
    assert led.spent() <= 3.0 + 1e-9
    assert statuses.count("charged") == 3
    assert led.summary().n_releases == 3
    assert led.verify().ok
    # the duplicated request was either served as stored or refused, never charged twice
    assert len({e.release_id for e in led.entries()}) == led.summary().n_releases


def test_sigkill_inside_transaction_leaves_ledger_consistent(tmp_path):
    path = tmp_path / "l.sqlite"
    flag = tmp_path / "inside.flag"
    led = PrivacyLedger(path, 3.0)
    led.charge_and_record("before", "count", "v1", 1.0, lambda: "{}")
    worker = Path(__file__).with_name("_ledger_workers.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, str(worker), str(path), str(flag)], env=env)
    try:
        deadline = time.time() + 60
        while not flag.exists():
            assert proc.poll() is None, "worker exited before reaching the transaction"
            assert time.time() < deadline, "worker never reached the transaction"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    after = PrivacyLedger(path, 3.0)
    check = after.verify()
    assert check.ok and check.n_entries == 1 and check.spent == pytest.approx(1.0)
    assert after.get("victim") is None
    # the lock was released with the process: the same release can now be made once
    assert after.charge_and_record("victim", "count", "v1", 1.0, lambda: "{}").status == "charged"
    assert after.spent() == pytest.approx(2.0) and after.verify().ok
