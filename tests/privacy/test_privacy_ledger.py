"""The budget ledger: atomic charges, caching, refusal, tampering, concurrency, crashes.

Every multi-process test bounds each wait; a worker that dies or hangs is killed and the
test fails instead of hanging (pytest-timeout is the backstop).
"""

from __future__ import annotations

import doctest
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import privacy.ledger
from privacy.ledger import (
    LEDGER_FORMAT,
    BudgetExceededError,
    LedgerError,
    LedgerIntegrityError,
    LedgerMissingError,
    LedgerSummary,
    PrivacyLedger,
)
from privacy.objects import LedgerStamp

SECRET = bytes(range(32))
FP = "0123456789abcdef"
WORKER = Path(__file__).with_name("_ledger_workers.py")


def _open(tmp_path: Path, budget: float = 3.0, *, path: Path | None = None,
          anchor: Path | None | str = "default", **kw) -> PrivacyLedger:
    kw.setdefault("secret", SECRET)
    kw.setdefault("key_fingerprint", FP)
    anchor_path = tmp_path / "anchor.json" if anchor == "default" else anchor
    return PrivacyLedger(path or tmp_path / "l.sqlite", budget, anchor_path=anchor_path, **kw)


def _charge(led: PrivacyLedger, rid: str, eps: float = 0.5, **kw):
    return led.charge_and_record(rid, "public_suite", "v1", eps, lambda: json.dumps({"r": rid}),
                                 **kw)


def _must_refuse(led: PrivacyLedger, needle: str, *, anchors=()) -> LedgerIntegrityError:
    """A charge is refused with ``needle`` among the problems; nothing computed or charged."""
    before = len(led.entries())
    called = []
    with pytest.raises(LedgerIntegrityError) as info:
        led.charge_and_record("new-release", "public_suite", "v1", 0.1,
                              lambda: called.append(1) or "{}", anchors=anchors)
    assert not called, "noise was drawn for a refused release"
    assert len(led.entries()) == before and led.get("new-release") is None
    assert any(needle in p for p in info.value.problems), info.value.problems
    check = led.verify(anchors)
    assert not check.ok and any(needle in p for p in check.problems), check.problems
    assert not led.summary(anchors).verified
    return info.value


# ------------------------------------------------------------------ behaviour


def test_charge_cache_and_summary(tmp_path):
    led = _open(tmp_path, 2.0)
    calls = []

    def compute():
        calls.append(1)
        return '{"v": 1}'

    first = led.charge_and_record("r1", "count", "v1", 0.75, compute)
    second = led.charge_and_record("r1", "count", "v1", 0.75, compute)
    assert (first.status, second.status) == ("charged", "cached")
    assert len(calls) == 1  # no fresh noise on the second request
    assert second.entry == first.entry and second.stamp == first.stamp
    assert first.stamp == LedgerStamp(led.ledger_id, 1, first.entry.entry_hash)
    assert led.stamp_of(first.entry) == first.stamp
    s = led.summary()
    assert isinstance(s, LedgerSummary)
    assert (s.spent, s.remaining, s.n_releases, s.verified) == (0.75, 1.25, 1, True)
    assert s.head == first.stamp and s.head_hash == first.entry.entry_hash
    assert s.ledger_id == led.ledger_id and s.problems == ()
    assert s.to_frame()["release_id"].to_list() == ["r1"]


def test_overspend_refused_and_nothing_stored(tmp_path):
    led = _open(tmp_path, 1.0)
    _charge(led, "a", 0.6)
    called = []
    with pytest.raises(BudgetExceededError) as info:
        led.charge_and_record("b", "count", "v1", 0.5, lambda: called.append(1) or "{}")
    assert not called  # the noise is never drawn for a refused release
    assert info.value.remaining == pytest.approx(0.4)
    assert "0.4" in str(info.value)
    assert led.get("b") is None and led.spent() == pytest.approx(0.6)
    _charge(led, "c", 0.4)  # exactly the remainder is still allowed
    assert led.spent() == pytest.approx(1.0) and led.verify().ok


def test_compute_failure_charges_nothing(tmp_path):
    led = _open(tmp_path)

    def boom() -> str:
        raise RuntimeError("draw failed")

    with pytest.raises(RuntimeError):
        led.charge_and_record("a", "count", "v1", 0.5, boom)
    assert led.entries() == [] and led.spent() == 0.0
    assert not (tmp_path / "anchor.json").exists()


def test_budget_fixed_at_creation(tmp_path):
    _open(tmp_path, 1.0)
    with pytest.raises(LedgerError, match="fixed when the ledger starts"):
        _open(tmp_path, 5.0)


def test_append_only_triggers(tmp_path):
    led = _open(tmp_path, 1.0)
    _charge(led, "a")
    con = sqlite3.connect(tmp_path / "l.sqlite")
    try:
        for sql in ("UPDATE entries SET epsilon = 0.0", "DELETE FROM entries",
                    "UPDATE meta SET value = '9.0' WHERE key = 'budget'", "DELETE FROM meta"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                con.execute(sql)
    finally:
        con.close()


def test_anchor_file_follows_the_head(tmp_path):
    led = _open(tmp_path)
    out = [_charge(led, f"r{i}") for i in range(3)]
    anchor = json.loads((tmp_path / "anchor.json").read_text())
    assert anchor == {"ledger_id": led.ledger_id, "seq": 3,
                      "entry_hash": out[-1].entry.entry_hash,
                      "ledger_path": str((tmp_path / "l.sqlite").absolute())}
    assert LedgerStamp.from_dict(anchor) == led.summary().head
    # a cached serve brings a lagging anchor (crash after COMMIT) up to the head
    (tmp_path / "anchor.json").write_text(json.dumps({**out[0].stamp.as_dict()}))
    assert led.verify().ok  # behind is fine: the ledger extends it
    assert _charge(led, "r0").status == "cached"
    assert json.loads((tmp_path / "anchor.json").read_text())["seq"] == 3


def test_verify_stored(tmp_path):
    led = _open(tmp_path)
    a, b = _charge(led, "a"), _charge(led, "b")
    assert led.verify_stored(a.stamp, a.entry.payload)
    assert led.verify_stored(b.stamp, b.entry.payload)
    assert not led.verify_stored(a.stamp, b.entry.payload)  # other payload
    assert not led.verify_stored(LedgerStamp(led.ledger_id, 2, a.stamp.entry_hash),
                                 a.entry.payload)
    assert not led.verify_stored(LedgerStamp(led.ledger_id, 7, "x"), a.entry.payload)
    assert not led.verify_stored(LedgerStamp("0" * 64, 1, a.stamp.entry_hash), a.entry.payload)


def test_missing_ledger_not_created_when_create_is_false(tmp_path):
    with pytest.raises(LedgerMissingError):
        _open(tmp_path, create=False)
    assert list(tmp_path.iterdir()) == []
    _open(tmp_path)
    assert _open(tmp_path, create=False).verify().ok


def test_v1_ledger_refused_with_advice(tmp_path):
    path = tmp_path / "l.sqlite"
    con = sqlite3.connect(path)
    con.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                      "INSERT INTO meta VALUES ('format', 'flourish-privacy-ledger/1'),"
                      "('budget', '3.0'), ('created_at', 'x'), ('genesis_hash', 'y');")
    con.close()
    with pytest.raises(LedgerError, match="old, unkeyed") as info:
        _open(tmp_path)
    assert "Recovering a refused ledger" in str(info.value)
    assert LEDGER_FORMAT.endswith("/2")


def test_not_a_ledger(tmp_path):
    (tmp_path / "l.sqlite").write_text("hello, not sqlite" * 100)
    with pytest.raises(LedgerError, match="not a Flourish privacy ledger"):
        _open(tmp_path)


def test_hook_stages_in_order(tmp_path):
    led = _open(tmp_path)
    stages: list[str] = []
    _charge(led, "a", _hook=stages.append)
    assert stages == ["locked", "computed", "inserted", "committed", "anchored"]


def test_doctests():
    result = doctest.testmod(privacy.ledger,
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------ tampering: all refused


def _files(path: Path) -> list[Path]:
    return [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]


def _remove_ledger(path: Path) -> None:
    for p in _files(path):
        p.unlink()


def test_deleted_ledger_refused_via_anchor_file(tmp_path):
    led = _open(tmp_path)
    _charge(led, "r1")
    _remove_ledger(tmp_path / "l.sqlite")
    with pytest.raises(LedgerIntegrityError) as info:
        _open(tmp_path)  # a new ledger would reset the budget: none is created
    assert "deleted or moved" in str(info.value)
    assert not (tmp_path / "l.sqlite").exists()


def test_deleted_ledger_refused_via_published_stamps(tmp_path):
    led = _open(tmp_path)
    stamp = _charge(led, "r1").stamp
    _remove_ledger(tmp_path / "l.sqlite")
    (tmp_path / "anchor.json").unlink()  # the anchor file went too
    fresh = _open(tmp_path)  # a new, empty ledger...
    anchors = [("releases/r1.json", stamp)]
    err = _must_refuse(fresh, "deleted, replaced or relocated", anchors=anchors)
    assert any("releases/r1.json" in p and "Recovering a refused ledger" in p
               for p in err.problems)
    # ...and it can be anchored by a later charge only if no published stamp contradicts it
    assert fresh.spent() == 0.0


def test_rolled_back_ledger_refused(tmp_path):
    path = tmp_path / "l.sqlite"
    led = _open(tmp_path)
    first = _charge(led, "r1")
    backup = tmp_path / "backup"
    backup.mkdir()
    for p in _files(path):
        shutil.copy2(p, backup / p.name)
    _charge(led, "r2")
    _remove_ledger(path)
    for p in backup.iterdir():
        shutil.copy2(p, tmp_path / p.name)
    old = _open(tmp_path)
    assert old.ledger_id == led.ledger_id and old.spent() == 0.5  # budget "back"...
    _must_refuse(old, "rolled back to an older copy")  # ...but the anchor file says seq 2
    # with published stamps alone (anchor file gone) it is refused too
    (tmp_path / "anchor.json").unlink()
    stamp2 = LedgerStamp(led.ledger_id, 2, "whatever the report printed")
    _must_refuse(old, "rolled back", anchors=[("report/index.html", stamp2)])
    assert old.verify([("r1", first.stamp)]).ok


def test_relocated_ledger_refused(tmp_path):
    led = _open(tmp_path)
    _charge(led, "r1")
    # `[privacy] ledger` pointed elsewhere, the anchor stays beside study.toml: no new
    # ledger is created there...
    other = tmp_path / "elsewhere" / "l.sqlite"
    with pytest.raises(LedgerIntegrityError, match="deleted or moved"):
        _open(tmp_path, path=other)
    assert not other.exists()
    # ...and a ledger that already exists there (made without the anchor) is refused
    _open(tmp_path, path=other, anchor=None)
    elsewhere = _open(tmp_path, path=other)
    err = _must_refuse(elsewhere, "deleted, replaced or relocated")
    assert any(str(tmp_path / "anchor.json") in p for p in err.problems)
    # moving the very same file is not a reset: it still extends the anchor
    moved = tmp_path / "moved.sqlite"
    shutil.move(tmp_path / "l.sqlite", moved)
    assert _open(tmp_path, path=moved).verify().ok


def test_rows_rewritten_with_an_unkeyed_chain_refused(tmp_path):
    path = tmp_path / "l.sqlite"
    led = _open(tmp_path)
    for i in range(3):
        _charge(led, f"r{i}", 1.0)
    with pytest.raises(BudgetExceededError):
        _charge(led, "more", 0.5)
    # the attacker lowers entry 1's epsilon and recomputes a sha256 chain (no key), then
    # points the anchor file at the new head
    con = sqlite3.connect(path)
    con.executescript("DROP TRIGGER entries_no_update; DROP TRIGGER entries_no_delete;")
    con.execute("UPDATE entries SET epsilon = 0.01 WHERE seq = 1")
    genesis = con.execute("SELECT value FROM meta WHERE key = 'genesis'").fetchone()[0]
    prev = genesis
    for row in con.execute("SELECT seq, release_id, kind, data_version, epsilon, payload, "
                           "created_at FROM entries ORDER BY seq").fetchall():
        seq, rid, kind, dv, eps, payload, created = row
        parts = [prev, str(seq), rid, kind, dv, repr(float(eps)),
                 hashlib.sha256(payload.encode()).hexdigest(), created]
        h = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
        con.execute("UPDATE entries SET prev_hash = ?, entry_hash = ? WHERE seq = ?",
                    (prev, h, seq))
        prev = h
    con.commit()
    con.close()
    (tmp_path / "anchor.json").write_text(json.dumps(
        {"ledger_id": genesis, "seq": 3, "entry_hash": prev}))
    tampered = _open(tmp_path)
    assert tampered.spent() == pytest.approx(2.01)  # budget apparently freed...
    _must_refuse(tampered, "do not match its keyed hash")  # ...but refused


def test_budget_raised_in_meta_refused(tmp_path):
    path = tmp_path / "l.sqlite"
    led = _open(tmp_path, 1.0)
    _charge(led, "r1", 1.0)
    con = sqlite3.connect(path)
    con.executescript("DROP TRIGGER meta_no_update;"
                      "UPDATE meta SET value = '100.0' WHERE key = 'budget';")
    con.close()
    with pytest.raises(LedgerError, match="fixed when the ledger starts"):
        _open(tmp_path, 1.0)
    raised = _open(tmp_path, 100.0)  # spec and meta both raised
    _must_refuse(raised, "genesis record does not match")


def test_pseudonym_key_changed_refused(tmp_path):
    led = _open(tmp_path)
    _charge(led, "r1")
    other = _open(tmp_path, key_fingerprint="fedcba9876543210")
    err = _must_refuse(other, "the pseudonym key changed since this ledger was created")
    assert any("restore the original key" in p for p in err.problems)


def test_wrong_ledger_key_refused(tmp_path):
    led = _open(tmp_path)
    _charge(led, "r1")
    _must_refuse(_open(tmp_path, secret=b"x" * 32), "genesis record does not match")


@pytest.mark.parametrize(
    ("sql", "needle"),
    [
        ("UPDATE entries SET payload = '{\"n\": 5}' WHERE seq = 1;", "entry 1 (release r0"),
        ("DELETE FROM entries WHERE seq = 2;", "expected entry 2"),
        ("DELETE FROM entries WHERE seq = 3;", "rolled back"),
    ],
)
def test_edited_rows_detected(tmp_path, sql, needle):
    path = tmp_path / "l.sqlite"
    led = _open(tmp_path)
    for i in range(3):
        _charge(led, f"r{i}")
    con = sqlite3.connect(path)
    con.executescript("DROP TRIGGER entries_no_update; DROP TRIGGER entries_no_delete;" + sql)
    con.close()
    _must_refuse(_open(tmp_path), needle)


def test_unreadable_anchor_file_refused(tmp_path):
    led = _open(tmp_path)
    _charge(led, "r1")
    (tmp_path / "anchor.json").write_text("{not json")
    _must_refuse(led, "anchor.json")


# ------------------------------------------------------------------ processes


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _spawn(mode: str, **args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), mode, json.dumps(args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env())


def _reap(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):
            pass


def _wait_files(paths: list[Path], procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.time() + timeout
    while not all(p.exists() for p in paths):
        dead = [p for p in procs if p.poll() is not None]
        assert not dead, f"a worker died before it was ready: {dead[0].communicate()[1]}"
        assert time.time() < deadline, "workers never became ready"
        time.sleep(0.01)


@pytest.mark.timeout(180)
def test_concurrent_processes_never_overspend(tmp_path):
    path, anchor = tmp_path / "l.sqlite", tmp_path / "anchor.json"
    _open(tmp_path, 3.0)
    # eight processes: six distinct suites of ε 1 against a budget of 3, plus r0 and r1
    # requested twice more, so processes also race for the same release id
    rids = [f"r{i}" for i in range(6)] + ["r0", "r1"]
    start = tmp_path / "start"
    deadline = time.time() + 90
    procs, ready = [], []
    try:
        for i, rid in enumerate(rids):
            ready.append(tmp_path / f"ready{i}")
            procs.append(_spawn(
                "race", path=str(path), anchor=str(anchor), budget=3.0, secret_hex=SECRET.hex(),
                release_id=rid, epsilon=1.0, ready=str(ready[-1]), start=str(start),
                deadline=deadline))
        _wait_files(ready, procs, timeout=60)
        start.write_text("go")
        results = []
        for p in procs:
            out, err = p.communicate(timeout=max(deadline - time.time(), 1))
            assert p.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        _reap(procs)
    led = _open(tmp_path, 3.0)
    check = led.verify()
    assert check.ok, check.problems
    assert check.spent <= 3.0 + 1e-9 and check.n_entries == 3
    statuses = [r["status"] for r in results]
    assert statuses.count("charged") == 3 and "no-start" not in statuses
    charged = [r["release_id"] for r in results if r["status"] == "charged"]
    assert len(set(charged)) == len(charged)  # each release id charged at most once
    assert {e.release_id for e in led.entries()} == set(charged)
    for r in results:  # a 'cached' answer is the stored entry (no second draw)
        if r["status"] == "cached":
            assert led.get(r["release_id"]).entry_hash == r["entry_hash"]
    head = LedgerStamp.from_dict(json.loads(anchor.read_text()))
    assert head == check.head  # the anchor file holds the final head


@pytest.mark.timeout(240)
def test_sigkill_at_random_points_leaves_ledger_consistent(tmp_path):
    path, anchor = tmp_path / "l.sqlite", tmp_path / "anchor.json"
    releases = tmp_path / "releases"
    releases.mkdir()
    budget, eps = 0.6, 0.005  # 120 charges fit: the kills land in charges, then refusals
    _open(tmp_path, budget)
    rng = random.Random(20240711)
    kills = 0
    for i in range(32):
        ready = tmp_path / f"ready{i}"
        proc = _spawn("churn", path=str(path), anchor=str(anchor), budget=budget,
                      secret_hex=SECRET.hex(), epsilon=eps, releases=str(releases),
                      ready=str(ready), seed=i, deadline=time.time() + 30)
        try:
            _wait_files([ready], [proc], timeout=30)
            time.sleep(rng.uniform(0.0, 0.25))
            assert proc.poll() is None, proc.communicate()
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            kills += proc.returncode == -signal.SIGKILL
        finally:
            _reap([proc])
        out = proc.stdout.read() if proc.stdout and not proc.stdout.closed else ""
        assert "integrity" not in (out or "")
        _check_after_crash(tmp_path, budget, releases)
    assert kills == 32
    led = _open(tmp_path, budget)
    assert led.spent() > 0.1  # the workers did charge between kills
    # the ledger is still usable: a release is served or refused cleanly
    try:
        _charge(led, "after", eps)
    except BudgetExceededError:
        pass
    assert led.verify().ok


def _check_after_crash(tmp_path: Path, budget: float, releases: Path) -> None:
    led = _open(tmp_path, budget)
    stamps = []
    for f in sorted(releases.glob("*.json")):
        d = json.loads(f.read_text())  # a release file is whole or absent, never torn
        stamp = LedgerStamp.from_dict(d["ledger"])
        assert led.verify_stored(stamp, d["payload"]), f
        stamps.append((str(f), stamp))
    check = led.verify(stamps)  # also checks the anchor file
    assert check.ok, check.problems
    assert check.spent <= budget + 1e-9
    ids = [e.release_id for e in led.entries()]
    assert len(ids) == len(set(ids))
    if (tmp_path / "anchor.json").exists():
        a = LedgerStamp.from_dict(json.loads((tmp_path / "anchor.json").read_text()))
        assert a.ledger_id == led.ledger_id and a.seq <= check.n_entries
    # leftovers of a write killed midway are hidden temporary files, never a *.json
    for p in releases.iterdir():
        assert p.suffix == ".json" or (p.name.startswith(".") and p.name.endswith(".tmp")), p
