"""The study's privacy-budget ledger: SQLite, append-only, keyed hash chain, anchored.

Every public release is charged here *in the same transaction* that stores its result:

1. ``BEGIN IMMEDIATE`` takes SQLite's write lock, so concurrent releasers (threads or
   processes) are serialised and each sees what the others charged;
2. the whole ledger is verified under that lock (keyed chain, budget, pseudonym-key
   fingerprint, and every published head it must extend); any problem refuses the
   release (:class:`LedgerIntegrityError`) before anything is computed or charged;
3. a release already stored under the same ``release_id`` is returned as stored: no
   fresh noise, no second charge;
4. a release whose ε exceeds what remains is refused (:class:`BudgetExceededError`);
5. otherwise the caller's ``compute`` callback draws the noise *inside* the transaction
   and the charge and the result are inserted together, then ``COMMIT``; then the new
   head is written to the *anchor file* (atomically, under the lock again).

Why keyed and anchored. Anyone who can write the file could rewrite rows and recompute an
unkeyed chain, delete the file, or put back an older copy, each giving a fresh or larger
budget. So the chain is an HMAC under a secret the ledger file does not contain (the
study's ledger key), and the ledger must *extend* every head published before: the anchor
file beside study.toml and the stamps in released files. A deleted, replaced, relocated,
rolled-back or rewritten ledger fails that check and every further release is refused;
the only recovery is restoring the ledger from backup (a lost budget is never re-spent).

A process killed anywhere before ``COMMIT`` leaves no trace (SQLite rolls the transaction
back); killed between ``COMMIT`` and the anchor write, it leaves the anchor one head
behind, which the ledger still extends. Rows are never updated or deleted (triggers).

This module imports only the standard library (it runs in worker processes cheaply).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from privacy.files import write_atomic
from privacy.objects import LedgerStamp

LEDGER_FORMAT = "flourish-privacy-ledger/2"
OLD_FORMATS = ("flourish-privacy-ledger/1",)
EPS_SLACK = 1e-9
"""Float tolerance when comparing ε sums against the budget."""
MIN_SECRET_BYTES = 16
RECOVERY = ("restore the ledger file from backup; a lost ledger cannot be recreated, see README "
            "'Recovering a refused ledger'")

ChargeStatus = Literal["charged", "cached"]
Anchor = tuple[str, LedgerStamp]
"""``(where the stamp was found, the stamp)``: a ledger head published earlier."""


class BudgetExceededError(RuntimeError):
    """A release would overspend the budget; nothing was charged or released."""

    def __init__(self, release_id: str, requested: float, spent: float, budget: float) -> None:
        self.release_id = release_id
        self.requested = requested
        self.spent = spent
        self.budget = budget
        self.remaining = _left(budget, spent)
        super().__init__(
            f"release {release_id[:12]} needs epsilon={requested:.6g} but only "
            f"{self.remaining:.6g} of the study's budget {budget:.6g} remains "
            f"(spent {spent:.6g}); nothing was released"
        )


class LedgerError(RuntimeError):
    """The ledger file is unusable: another budget, an old format, not a Flourish ledger."""


class LedgerMissingError(LedgerError):
    """The ledger file does not exist and was not to be created."""


class LedgerIntegrityError(LedgerError):
    """The ledger does not verify or does not extend a published head; nothing was charged.

    ``problems`` holds one sentence per problem found.
    """

    def __init__(self, path: Path | str, problems: Iterable[str]) -> None:
        self.path = str(path)
        self.problems = tuple(problems)
        super().__init__(
            f"the privacy ledger {path} cannot be trusted, nothing was charged:\n  - "
            + "\n  - ".join(self.problems)
        )


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
    stamp: LedgerStamp


@dataclass(frozen=True)
class LedgerVerification:
    """Result of :meth:`PrivacyLedger.verify`: ``ok``, or a sentence per problem found."""

    ok: bool
    n_entries: int
    spent: float
    head: LedgerStamp | None
    problems: tuple[str, ...] = ()

    @property
    def head_hash(self) -> str:
        """Hash of the newest entry ('' when the ledger is empty)."""
        return self.head.entry_hash if self.head is not None else ""


@dataclass(frozen=True)
class LedgerSummary:
    """Budget spent and left, by release; what the public report shows.

    ``releases`` holds ``(release_id, kind, epsilon, created_at)`` per charged release;
    ``head`` the newest entry's stamp and ``ledger_id`` the ledger's keyed genesis hash.
    """

    budget: float
    spent: float
    remaining: float
    n_releases: int
    head_hash: str
    verified: bool
    releases: tuple[dict[str, object], ...] = field(default_factory=tuple)
    ledger_id: str = ""
    head: LedgerStamp | None = None
    problems: tuple[str, ...] = ()

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


def _mac(secret: bytes, parts: Iterable[str]) -> str:
    return hmac.new(secret, "\x1f".join(parts).encode("utf-8"), "sha256").hexdigest()


def _entry_hash(
    secret: bytes,
    prev_hash: str,
    seq: int,
    release_id: str,
    kind: str,
    data_version: str,
    epsilon: float,
    payload: str,
    created_at: str,
) -> str:
    # ε goes in through repr (round-trip exact for floats), the payload through its sha256.
    return _mac(secret, [
        prev_hash, str(seq), release_id, kind, data_version, repr(float(epsilon)),
        hashlib.sha256(payload.encode("utf-8")).hexdigest(), created_at,
    ])


def _genesis(secret: bytes, fmt: str, budget: str, created_at: str, fingerprint: str) -> str:
    return _mac(secret, [fmt, budget, created_at, fingerprint])


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

_COLS = (
    "seq, release_id, kind, data_version, epsilon, payload, created_at, prev_hash, entry_hash"
)


class PrivacyLedger:
    """The append-only, keyed-hash-chained privacy-budget ledger of one study.

    Parameters
    ----------
    path
        The SQLite file; by convention ``privacy_ledger.sqlite`` beside study.toml, never
        inside the disposable ``output_dir``.
    budget
        The study's total ε (``[privacy] epsilon``). Recorded when the ledger is created;
        opening an existing ledger with a different budget raises :class:`LedgerError`
        (a budget is not raised after the fact by editing the spec).
    secret
        The study's ledger key (derived, at least 16 bytes): the chain and the genesis
        record are HMACs under it, so rows cannot be rewritten without it.
    key_fingerprint
        Fingerprint of the study's *pseudonym* key, recorded at creation; a ledger opened
        with another fingerprint refuses every release (the same people would otherwise
        be released again under new pseudonyms as if they were new data).
    anchor_path
        The anchor file (``privacy_ledger.anchor.json`` beside study.toml): the newest
        head, rewritten after every charge; the ledger must extend it. None: no anchor.
    create
        Create the ledger when the file is missing; when False a missing file raises
        :class:`LedgerMissingError` and nothing is created. A missing ledger is never
        created while the anchor file records one (:class:`LedgerIntegrityError`).
    timeout_s
        How long to wait for another process's write lock.

    Raises
    ------
    LedgerError
        An old (v1) or foreign file, or a budget other than the recorded one.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> led = PrivacyLedger(folder / "ledger.sqlite", 1.0, secret=b"s" * 32,
    ...                     key_fingerprint="0123456789abcdef", anchor_path=folder / "a.json")
    >>> led.charge_and_record("r1", "count", "v1", 0.4, lambda: '{"n": 3}').status
    'charged'
    >>> led.charge_and_record("r1", "count", "v1", 0.4, lambda: '{"n": 99}').entry.payload
    '{"n": 3}'
    >>> round(led.summary().remaining, 6), led.verify().ok
    (0.6, True)
    >>> import json; json.loads((folder / "a.json").read_text())["seq"]
    1
    """

    def __init__(
        self,
        path: Path | str,
        budget: float,
        *,
        secret: bytes,
        key_fingerprint: str,
        anchor_path: Path | str | None = None,
        create: bool = True,
        timeout_s: float = 120.0,
    ) -> None:
        if not budget > 0:
            raise ValueError(f"budget must be positive, got {budget!r}")
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the ledger secret must be at least {MIN_SECRET_BYTES} bytes")
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._secret = secret
        self.key_fingerprint = key_fingerprint
        self.anchor_path = None if anchor_path is None else Path(anchor_path)
        if not self.path.exists():
            if not create:
                raise LedgerMissingError(f"{self.path}: no privacy ledger here (nothing was created)")
            anchor = self._read_anchor_file()
            if anchor is not None:
                raise LedgerIntegrityError(self.path, [
                    f"the ledger file {self.path} is missing, but the anchor file "
                    f"{self.anchor_path} records ledger {anchor[1].ledger_id[:16]} with "
                    f"{anchor[1].seq} release(s): the ledger was deleted or moved, and a new "
                    f"one would reset the budget; {RECOVERY}"
                ])
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            meta = self._open(budget, create=create)
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: not a Flourish privacy ledger ({exc})") from None
        fmt = meta.get("format")
        if fmt in OLD_FORMATS:
            raise LedgerError(
                f"{self.path} is an old, unkeyed privacy ledger ({fmt}): anyone who can write "
                "the file could rewrite its chain, so it is no longer trusted. Move it aside "
                "(keep it as the record of what was spent) and start a new ledger with the "
                "budget reduced by what it spent (`[privacy] epsilon`); see README 'Recovering "
                "a refused ledger'"
            )
        if fmt != LEDGER_FORMAT:
            raise LedgerError(f"{self.path}: not a Flourish privacy ledger (format {fmt!r})")
        try:
            stored = float(meta["budget"])
        except (KeyError, ValueError):
            raise LedgerError(f"{self.path}: the recorded budget is unreadable") from None
        if abs(stored - float(budget)) > EPS_SLACK:
            raise LedgerError(
                f"{self.path}: ledger was created with budget epsilon={stored:g}, "
                f"the study now asks for {budget:g}; a budget is fixed when the ledger starts"
            )
        self.budget = stored
        self._meta = meta

    # ------------------------------------------------------------------ plumbing

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            con.execute(f"PRAGMA busy_timeout={int(self.timeout_s * 1000)}")
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
        except BaseException:
            con.close()
            raise
        return con

    def _open(self, budget: float, *, create: bool) -> dict[str, str]:
        con = self._connect()
        try:
            has_meta = con.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).fetchone()
            if has_meta:
                meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
                if meta:
                    return meta
            if not create:
                raise LedgerMissingError(f"{self.path}: the file holds no privacy ledger")
            con.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _SCHEMA.split(";\n"):
                    if stmt.strip():
                        con.execute(stmt)
                meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
                if not meta:  # nobody initialised it while we waited for the lock
                    created = _now()
                    b = repr(float(budget))
                    meta = {
                        "format": LEDGER_FORMAT,
                        "budget": b,
                        "created_at": created,
                        "key_fingerprint": self.key_fingerprint,
                        "genesis": _genesis(self._secret, LEDGER_FORMAT, b, created,
                                            self.key_fingerprint),
                    }
                    con.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta.items())
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            return meta
        finally:
            con.close()

    @property
    def ledger_id(self) -> str:
        """The ledger's identity: its keyed genesis hash (hex)."""
        return self._meta.get("genesis", "")

    def _read_anchor_file(self) -> Anchor | None:
        """``(description, stamp)`` from the anchor file, None when there is none.

        An unreadable anchor file yields a stamp no ledger extends (``ledger_id`` says why).
        """
        if self.anchor_path is None or not self.anchor_path.exists():
            return None
        where = f"the anchor file {self.anchor_path}"
        try:
            d = json.loads(self.anchor_path.read_text(encoding="utf-8"))
            return where, LedgerStamp.from_dict(d)
        except (OSError, ValueError, KeyError, TypeError):
            return where, LedgerStamp("<unreadable anchor file>", 0, "")

    def _write_anchor(self, con: sqlite3.Connection) -> None:
        """Write the current head to the anchor file while holding the write lock."""
        if self.anchor_path is None:
            return
        con.execute("BEGIN IMMEDIATE")
        try:
            last = con.execute(
                "SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            if last is not None:
                current = self._read_anchor_file()
                if current is None or current[1].ledger_id != self.ledger_id or (
                        current[1].seq < int(last[0])):
                    write_atomic(self.anchor_path, json.dumps({
                        "ledger_id": self.ledger_id, "seq": int(last[0]),
                        "entry_hash": str(last[1]), "ledger_path": str(self.path.absolute()),
                    }, indent=1, sort_keys=True) + "\n")
        finally:
            con.execute("ROLLBACK")

    def stamp_of(self, entry: LedgerEntry) -> LedgerStamp:
        """The stamp (ledger id, seq, keyed hash) identifying ``entry`` in this ledger."""
        return LedgerStamp(self.ledger_id, entry.seq, entry.entry_hash)

    def _verify_con(self, con: sqlite3.Connection, anchors: Iterable[Anchor]) -> tuple[
            LedgerVerification, list[LedgerEntry]]:
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        rows = con.execute(f"SELECT {_COLS} FROM entries ORDER BY seq").fetchall()
        entries = [LedgerEntry(*r) for r in rows]
        problems: list[str] = []
        genesis = meta.get("genesis", "")
        want = _genesis(self._secret, meta.get("format", ""), meta.get("budget", ""),
                        meta.get("created_at", ""), meta.get("key_fingerprint", ""))
        if not hmac.compare_digest(want, genesis):
            problems.append(
                "the ledger's genesis record does not match its keyed hash: the recorded "
                "budget, creation time or key fingerprint was altered, or the ledger key is "
                f"not the one that created this ledger; {RECOVERY} (and restore its ledger key)"
            )
        if genesis != self.ledger_id:
            problems.append(
                f"the ledger's identity changed while it was open (was "
                f"{self.ledger_id[:16]}, now {genesis[:16]}): the file was replaced; {RECOVERY}"
            )
        stored_fp = meta.get("key_fingerprint", "")
        if stored_fp != self.key_fingerprint:
            problems.append(
                f"the pseudonym key changed since this ledger was created (fingerprint "
                f"{stored_fp} recorded, {self.key_fingerprint} now): releases are refused, "
                "not re-spent; restore the original key"
            )
        prev, spent = genesis, 0.0
        for i, e in enumerate(entries, start=1):
            if e.seq != i:
                problems.append(
                    f"entry {e.seq}: expected entry {i} here, so an entry was removed or "
                    f"inserted; {RECOVERY}"
                )
            if e.prev_hash != prev:
                problems.append(
                    f"entry {e.seq}: its link to the previous entry is broken (an entry was "
                    f"removed, inserted or rewritten); {RECOVERY}"
                )
            h = _entry_hash(self._secret, e.prev_hash, e.seq, e.release_id, e.kind,
                            e.data_version, e.epsilon, e.payload, e.created_at)
            if not hmac.compare_digest(h, e.entry_hash):
                problems.append(
                    f"entry {e.seq} (release {e.release_id[:12]}): its contents do not match "
                    f"its keyed hash, so it was edited; {RECOVERY}"
                )
            prev = e.entry_hash
            spent += float(e.epsilon)
        try:
            budget = float(meta.get("budget", "nan"))
        except ValueError:
            budget = float("nan")
        if not spent <= budget + EPS_SLACK:
            problems.append(
                f"the ledger records {spent:g} spent, more than its budget {budget:g}"
            )
        by_seq = {e.seq: e for e in entries}
        from_file = self._read_anchor_file()
        all_anchors = [*anchors, *([from_file] if from_file is not None else [])]
        for where, stamp in all_anchors:
            problems.extend(self._anchor_problems(where, stamp, genesis, by_seq))
        head = None if not entries else LedgerStamp(genesis, entries[-1].seq,
                                                    entries[-1].entry_hash)
        check = LedgerVerification(not problems, len(entries), spent, head,
                                   tuple(dict.fromkeys(problems)))
        return check, entries

    def _anchor_problems(self, where: str, stamp: LedgerStamp, genesis: str,
                         by_seq: dict[int, LedgerEntry]) -> list[str]:
        if stamp.ledger_id != genesis:
            return [
                f"{where} records ledger {stamp.ledger_id[:16]}, but {self.path} is ledger "
                f"{genesis[:16]}: the ledger was deleted, replaced or relocated since that "
                f"was published; {RECOVERY}"
            ]
        entry = by_seq.get(stamp.seq)
        if entry is None:
            return [
                f"{where} records entry {stamp.seq}, which {self.path} does not have (it holds "
                f"{len(by_seq)}): the ledger was rolled back to an older copy or truncated; "
                f"{RECOVERY}"
            ]
        if not hmac.compare_digest(entry.entry_hash, stamp.entry_hash):
            return [
                f"{where} records entry {stamp.seq} with another hash than {self.path} holds: "
                f"the ledger was replaced by another copy or rewritten; {RECOVERY}"
            ]
        return []

    # ------------------------------------------------------------------ API

    def get(self, release_id: str) -> LedgerEntry | None:
        """The stored entry for ``release_id``, or None (reads only; charges nothing)."""
        con = self._connect()
        try:
            row = con.execute(
                f"SELECT {_COLS} FROM entries WHERE release_id = ?", (release_id,)
            ).fetchone()
        finally:
            con.close()
        return None if row is None else LedgerEntry(*row)

    def spent(self) -> float:
        """Total ε charged so far."""
        con = self._connect()
        try:
            (total,) = con.execute("SELECT COALESCE(SUM(epsilon), 0.0) FROM entries").fetchone()
        finally:
            con.close()
        return float(total)

    def entries(self) -> list[LedgerEntry]:
        """Every entry, oldest first."""
        con = self._connect()
        try:
            rows = con.execute(f"SELECT {_COLS} FROM entries ORDER BY seq").fetchall()
        finally:
            con.close()
        return [LedgerEntry(*r) for r in rows]

    def charge_and_record(
        self,
        release_id: str,
        kind: str,
        data_version: str,
        epsilon: float,
        compute: Callable[[], str],
        *,
        anchors: Iterable[Anchor] = (),
        _hook: Callable[[str], None] | None = None,
    ) -> ChargeOutcome:
        """Charge ``epsilon`` and store ``compute()``'s result atomically, or serve the stored one.

        Parameters
        ----------
        release_id
            Key of the release (sha256 of its canonical spec and the data version).
        kind, data_version
            Recorded with the charge.
        epsilon
            Privacy loss to charge (pure ε-DP; sequential composition adds them up). One
            charge is one whole release suite.
        compute
            Draws the release and returns its serialised payload. Called only when the
            ledger verifies and the release is new and affordable, while this process
            holds the write lock.
        anchors
            ``(where found, stamp)`` of ledger heads published earlier (release files, the
            report); the anchor file is always checked as well.
        _hook
            Test seam, called with a stage name (``"locked"``, ``"computed"``,
            ``"inserted"``, ``"committed"``, ``"anchored"``); the crash tests sleep there.

        Returns
        -------
        ChargeOutcome
            ``status="cached"`` when the release was already stored (nothing charged),
            with the entry and its stamp.

        Raises
        ------
        LedgerIntegrityError
            The ledger does not verify or does not extend an anchor; nothing is computed,
            charged or stored.
        BudgetExceededError
            When ``epsilon`` exceeds what remains; nothing is computed, charged or stored.
        """
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be non-negative, got {epsilon!r}")
        hook = _hook if _hook is not None else (lambda stage: None)
        anchors = list(anchors)
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                hook("locked")
                check, entries = self._verify_con(con, anchors)
                if not check.ok:
                    raise LedgerIntegrityError(self.path, check.problems)
                cached = next((e for e in entries if e.release_id == release_id), None)
                if cached is not None:
                    con.execute("ROLLBACK")
                    entry, status = cached, "cached"
                else:
                    if check.spent + epsilon > self.budget + EPS_SLACK:
                        raise BudgetExceededError(release_id, epsilon, check.spent, self.budget)
                    payload = compute()
                    if not isinstance(payload, str):
                        raise TypeError("compute() must return the release serialised as str")
                    hook("computed")
                    seq = check.n_entries + 1
                    prev = check.head.entry_hash if check.head is not None else self.ledger_id
                    created = _now()
                    h = _entry_hash(self._secret, prev, seq, release_id, kind, data_version,
                                    epsilon, payload, created)
                    entry = LedgerEntry(seq, release_id, kind, data_version, float(epsilon),
                                        payload, created, prev, h)
                    con.execute(f"INSERT INTO entries({_COLS}) VALUES (?,?,?,?,?,?,?,?,?)",
                                (seq, release_id, kind, data_version, float(epsilon), payload,
                                 created, prev, h))
                    hook("inserted")
                    con.execute("COMMIT")
                    status = "charged"
                    hook("committed")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            # After COMMIT: bring the anchor file up to the head (under the lock again, so
            # concurrent writers never leave an older head in it). A crash here leaves the
            # anchor behind the ledger, which the ledger still extends.
            self._write_anchor(con)
            hook("anchored")
        finally:
            con.close()
        return ChargeOutcome(status, entry, self.stamp_of(entry))  # type: ignore[arg-type]

    def verify(self, anchors: Iterable[Anchor] = ()) -> LedgerVerification:
        """Check the keyed chain, the budget, the key fingerprint and every published head.

        Parameters
        ----------
        anchors
            ``(where found, stamp)`` pairs of heads published earlier; the anchor file (if
            any) is checked too. The ledger must *extend* each: same ledger id, and the
            entry at the stamp's seq present with the stamp's hash.

        Returns
        -------
        LedgerVerification
            ``ok`` and the head, or one sentence per problem: an altered genesis (budget),
            an edited, inserted or removed entry, overspending, a changed pseudonym key,
            a head the ledger does not extend (deleted, replaced, relocated, rolled back).
        """
        return self._snapshot(anchors)[0]

    def _snapshot(self, anchors: Iterable[Anchor]) -> tuple[LedgerVerification, list[LedgerEntry]]:
        """Verification and entries read in one consistent snapshot (a read transaction)."""
        con = self._connect()
        try:
            con.execute("BEGIN")
            try:
                return self._verify_con(con, list(anchors))
            finally:
                con.execute("ROLLBACK")
        finally:
            con.close()

    def verify_stored(self, stamp: LedgerStamp, payload: str) -> bool:
        """Whether ``payload`` is exactly what this (verifying) ledger stored at ``stamp``."""
        if stamp.ledger_id != self.ledger_id:
            return False
        check, entries = self._snapshot(())  # the entry as verified, from the same read
        entry = next((e for e in entries if e.seq == int(stamp.seq)), None)
        return (check.ok and entry is not None
                and hmac.compare_digest(entry.entry_hash, stamp.entry_hash)
                and entry.payload == payload)

    def summary(self, anchors: Iterable[Anchor] = ()) -> LedgerSummary:
        """Budget, spent, remaining and the charged releases (verified first)."""
        check, entries = self._snapshot(anchors)
        releases = tuple(
            {"release_id": e.release_id, "kind": e.kind, "epsilon": e.epsilon,
             "created_at": e.created_at}
            for e in entries
        )
        return LedgerSummary(
            budget=self.budget,
            spent=check.spent,
            remaining=_left(self.budget, check.spent),
            n_releases=check.n_entries,
            head_hash=check.head_hash,
            verified=check.ok,
            releases=releases,
            ledger_id=self.ledger_id,
            head=check.head,
            problems=check.problems,
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def payload_json(obj: object) -> str:
    """Canonical JSON (sorted keys, no spaces) used for ledger payloads."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _left(budget: float, spent: float) -> float:
    """Budget left, with float residue of summed ε (below ``EPS_SLACK``) shown as 0."""
    left = budget - spent
    return 0.0 if left < EPS_SLACK else left
