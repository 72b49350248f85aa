"""The study's privacy-budget ledger: SQLite, append-only, hash-chained.

Every public release is charged here *in the same transaction* that stores its result:

1. ``BEGIN IMMEDIATE`` takes SQLite's write lock, so concurrent releasers (threads or
   processes) are serialised and each sees what the others charged;
2. a release already stored under the same ``release_id`` (sha256 of its spec and the
   data version) is returned as stored: no fresh noise, no second charge;
3. a release whose ε exceeds what remains is refused (:class:`BudgetExceededError`,
   naming what remains) and nothing is computed;
4. otherwise the caller's ``compute`` callback draws the noise *inside* the transaction
   and the charge and the result are inserted together, then ``COMMIT``.

A process killed anywhere before ``COMMIT`` leaves no trace (SQLite's journal rolls the
transaction back): nothing was charged, and nothing was released either, because the
result never left the process. Rows are never updated or deleted (triggers refuse it), and
each row carries ``sha256(previous row's hash | its own fields)``; :meth:`verify`
recomputes the chain, so an edited, inserted or removed row is detected. The chain's
head hash is published in the public report so that truncation of the newest rows can be
detected against that external copy.

This module imports only the standard library (it runs in worker processes cheaply).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

LEDGER_FORMAT = "flourish-privacy-ledger/1"
EPS_SLACK = 1e-9
"""Float tolerance when comparing ε sums against the budget."""

ChargeStatus = Literal["charged", "cached"]


class BudgetExceededError(RuntimeError):
    """A release would overspend the budget; nothing was charged or released."""

    def __init__(self, release_id: str, requested: float, spent: float, budget: float) -> None:
        self.release_id = release_id
        self.requested = requested
        self.spent = spent
        self.budget = budget
        self.remaining = max(budget - spent, 0.0)
        super().__init__(
            f"release {release_id[:12]} needs epsilon={requested:.6g} but only "
            f"{self.remaining:.6g} of the study's budget {budget:.6g} remains "
            f"(spent {spent:.6g}); nothing was released"
        )


class LedgerError(RuntimeError):
    """The ledger file belongs to another budget or is not a Flourish ledger."""


@dataclass(frozen=True)
class LedgerEntry:
    """One row of the ledger: a charged release and its stored result."""

    seq: int
    release_id: str
    kind: str
    data_version: str
    epsilon: float
    payload: str
    created_at: str
    prev_hash: str
    entry_hash: str


@dataclass(frozen=True)
class ChargeOutcome:
    """What :meth:`PrivacyLedger.charge_and_record` did: charged now, or served as stored."""

    status: ChargeStatus
    entry: LedgerEntry


@dataclass(frozen=True)
class LedgerVerification:
    """Result of :meth:`PrivacyLedger.verify`: ``ok`` or the first broken row and why."""

    ok: bool
    n_entries: int
    spent: float
    head_hash: str
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class LedgerSummary:
    """Budget spent and left, by release; what the public report shows.

    ``releases`` holds ``(release_id, kind, epsilon, created_at)`` per charged release.
    """

    budget: float
    spent: float
    remaining: float
    n_releases: int
    head_hash: str
    verified: bool
    releases: tuple[dict[str, object], ...] = field(default_factory=tuple)

    def to_frame(self):  # noqa: ANN201 - polars is optional for this module
        """Per-release rows as a polars frame (imports polars lazily)."""
        import polars as pl

        schema = {
            "release_id": pl.String,
            "kind": pl.String,
            "epsilon": pl.Float64,
            "created_at": pl.String,
        }
        return pl.DataFrame(list(self.releases), schema=schema, orient="row")


def _entry_hash(
    prev_hash: str,
    seq: int,
    release_id: str,
    kind: str,
    data_version: str,
    epsilon: float,
    payload: str,
    created_at: str,
) -> str:
    # ε is hashed through repr (round-trip exact for floats), the payload through its sha256.
    parts = [
        prev_hash,
        str(seq),
        release_id,
        kind,
        data_version,
        repr(float(epsilon)),
        hashlib.sha256(payload.encode("utf-8")).hexdigest(),
        created_at,
    ]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def _genesis_hash(budget: float, created_at: str) -> str:
    text = f"{LEDGER_FORMAT}\x1fbudget={float(budget)!r}\x1fcreated_at={created_at}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    release_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    data_version TEXT NOT NULL,
    epsilon REAL NOT NULL CHECK (epsilon >= 0),
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    entry_hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS meta_no_update BEFORE UPDATE ON meta
BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS meta_no_delete BEFORE DELETE ON meta
BEGIN SELECT RAISE(ABORT, 'the privacy ledger is append-only'); END;
"""


class PrivacyLedger:
    """The append-only, hash-chained privacy-budget ledger of one study.

    Parameters
    ----------
    path
        The SQLite file; by convention ``privacy_ledger.sqlite`` beside study.toml, never
        inside the disposable ``output_dir``. Created on first use.
    budget
        The study's total ε (``[privacy] epsilon``). Recorded when the ledger is created;
        opening an existing ledger with a different budget raises :class:`LedgerError`
        (a budget is not raised after the fact by editing the spec).
    timeout_s
        How long to wait for another process's write lock.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "ledger.sqlite"
    >>> led = PrivacyLedger(path, budget=1.0)
    >>> led.charge_and_record("r1", "count", "v1", 0.4, lambda: '{"n": 3}').status
    'charged'
    >>> led.charge_and_record("r1", "count", "v1", 0.4, lambda: '{"n": 99}').entry.payload
    '{"n": 3}'
    >>> round(led.summary().remaining, 6), led.verify().ok
    (0.6, True)
    """

    def __init__(self, path: Path | str, budget: float, *, timeout_s: float = 120.0) -> None:
        if not budget > 0:
            raise ValueError(f"budget must be positive, got {budget!r}")
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _SCHEMA.split(";\n"):
                    if stmt.strip():
                        con.execute(stmt)
                rows = dict(con.execute("SELECT key, value FROM meta").fetchall())
                if not rows:
                    created = _now()
                    con.executemany(
                        "INSERT INTO meta(key, value) VALUES (?, ?)",
                        [
                            ("format", LEDGER_FORMAT),
                            ("budget", repr(float(budget))),
                            ("created_at", created),
                            ("genesis_hash", _genesis_hash(budget, created)),
                        ],
                    )
                    rows = {"format": LEDGER_FORMAT, "budget": repr(float(budget))}
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        if rows.get("format") != LEDGER_FORMAT:
            raise LedgerError(f"{self.path}: not a Flourish privacy ledger")
        stored = float(rows["budget"])
        if abs(stored - float(budget)) > EPS_SLACK:
            raise LedgerError(
                f"{self.path}: ledger was created with budget epsilon={stored:g}, "
                f"the study now asks for {budget:g}; a budget is fixed when the ledger starts"
            )
        self.budget = stored

    # ------------------------------------------------------------------ plumbing

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
        return con

    @staticmethod
    def _row_to_entry(row: tuple) -> LedgerEntry:
        return LedgerEntry(*row)

    _COLS = (
        "seq, release_id, kind, data_version, epsilon, payload, created_at, prev_hash, "
        "entry_hash"
    )

    # ------------------------------------------------------------------ API

    def get(self, release_id: str) -> LedgerEntry | None:
        """The stored entry for ``release_id``, or None (reads only; charges nothing)."""
        with self._connect() as con:
            row = con.execute(
                f"SELECT {self._COLS} FROM entries WHERE release_id = ?", (release_id,)
            ).fetchone()
        return None if row is None else self._row_to_entry(row)

    def spent(self) -> float:
        """Total ε charged so far."""
        with self._connect() as con:
            (total,) = con.execute("SELECT COALESCE(SUM(epsilon), 0.0) FROM entries").fetchone()
        return float(total)

    def charge_and_record(
        self,
        release_id: str,
        kind: str,
        data_version: str,
        epsilon: float,
        compute: Callable[[], str],
        *,
        _hook: Callable[[], None] | None = None,
    ) -> ChargeOutcome:
        """Charge ``epsilon`` and store ``compute()``'s result atomically, or serve the stored one.

        Parameters
        ----------
        release_id
            Key of the release (sha256 of its canonical spec and the data version).
        kind, data_version
            Recorded with the charge.
        epsilon
            Privacy loss to charge (pure ε-DP; sequential composition adds them up).
        compute
            Draws the release and returns its serialised payload. Called only when the
            release is new and affordable, while this process holds the write lock.
        _hook
            Test seam, called inside the transaction after the insert and before COMMIT
            (the kill -9 test sleeps there).

        Returns
        -------
        ChargeOutcome
            ``status="cached"`` when the release was already stored (nothing charged).

        Raises
        ------
        BudgetExceededError
            When ``epsilon`` exceeds what remains; nothing is computed, charged or stored.
        """
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be non-negative, got {epsilon!r}")
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                row = con.execute(
                    f"SELECT {self._COLS} FROM entries WHERE release_id = ?", (release_id,)
                ).fetchone()
                if row is not None:
                    con.execute("ROLLBACK")
                    return ChargeOutcome("cached", self._row_to_entry(row))
                (spent,) = con.execute(
                    "SELECT COALESCE(SUM(epsilon), 0.0) FROM entries"
                ).fetchone()
                if float(spent) + epsilon > self.budget + EPS_SLACK:
                    raise BudgetExceededError(release_id, epsilon, float(spent), self.budget)
                payload = compute()
                last = con.execute(
                    "SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                if last is None:
                    seq = 1
                    (prev,) = con.execute(
                        "SELECT value FROM meta WHERE key = 'genesis_hash'"
                    ).fetchone()
                else:
                    seq, prev = int(last[0]) + 1, str(last[1])
                created = _now()
                h = _entry_hash(
                    prev, seq, release_id, kind, data_version, epsilon, payload, created
                )
                con.execute(
                    f"INSERT INTO entries({self._COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
                    (seq, release_id, kind, data_version, float(epsilon), payload, created,
                     prev, h),
                )
                if _hook is not None:
                    _hook()
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        finally:
            con.close()
        entry = LedgerEntry(seq, release_id, kind, data_version, float(epsilon), payload,
                            created, prev, h)
        return ChargeOutcome("charged", entry)

    def entries(self) -> list[LedgerEntry]:
        """Every entry, oldest first."""
        with self._connect() as con:
            rows = con.execute(f"SELECT {self._COLS} FROM entries ORDER BY seq").fetchall()
        return [self._row_to_entry(r) for r in rows]

    def verify(self) -> LedgerVerification:
        """Recompute the hash chain and the budget; report the first inconsistencies.

        Detects an edited field (hash mismatch), a removed or inserted row (broken link or
        sequence gap), an edited budget (genesis hash mismatch) and overspending. The
        removal of the newest rows is detected by comparing ``head_hash`` with a copy
        published earlier (the public report prints it).
        """
        with self._connect() as con:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        problems: list[str] = []
        genesis = _genesis_hash(float(meta["budget"]), meta["created_at"])
        if genesis != meta.get("genesis_hash"):
            problems.append("genesis: the recorded budget or creation time was altered")
        prev = meta.get("genesis_hash", "")
        spent = 0.0
        entries = self.entries()
        for i, e in enumerate(entries, start=1):
            if e.seq != i:
                problems.append(f"seq {e.seq}: expected {i} (a row was removed or inserted)")
            if e.prev_hash != prev:
                problems.append(f"seq {e.seq}: link to the previous row is broken")
            h = _entry_hash(e.prev_hash, e.seq, e.release_id, e.kind, e.data_version,
                            e.epsilon, e.payload, e.created_at)
            if h != e.entry_hash:
                problems.append(f"seq {e.seq}: contents do not match its hash (edited)")
            prev = e.entry_hash
            spent += e.epsilon
        if spent > float(meta["budget"]) + EPS_SLACK:
            problems.append(f"spent {spent:g} exceeds the budget {float(meta['budget']):g}")
        return LedgerVerification(not problems, len(entries), spent, prev, tuple(problems))

    def summary(self) -> LedgerSummary:
        """Budget, spent, remaining and the charged releases (verified first)."""
        check = self.verify()
        releases = tuple(
            {
                "release_id": e.release_id,
                "kind": e.kind,
                "epsilon": e.epsilon,
                "created_at": e.created_at,
            }
            for e in self.entries()
        )
        return LedgerSummary(
            budget=self.budget,
            spent=check.spent,
            remaining=max(self.budget - check.spent, 0.0),
            n_releases=check.n_entries,
            head_hash=check.head_hash,
            verified=check.ok,
            releases=releases,
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def payload_json(obj: object) -> str:
    """Canonical JSON (sorted keys, no spaces) used for ledger payloads."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
