"""Worker processes for the ledger's multi-process tests (run as ``python _ledger_workers.py``).

Every wait here has a deadline, so a worker whose parent died or whose start signal never
comes exits by itself instead of hanging a test run.

``race``: wait for a start file, charge one release, print one JSON line with the outcome.
``churn``: charge releases in a loop with random pauses at every stage of the transaction
(the parent SIGKILLs it at a random moment), writing each release's file atomically.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

from privacy.files import write_atomic
from privacy.ledger import BudgetExceededError, LedgerIntegrityError, PrivacyLedger

FINGERPRINT = "0123456789abcdef"


def _ledger(path: str, anchor: str, budget: float, secret_hex: str) -> PrivacyLedger:
    return PrivacyLedger(path, budget, secret=bytes.fromhex(secret_hex),
                         key_fingerprint=FINGERPRINT, anchor_path=anchor, timeout_s=60.0)


def _wait_for(path: Path, deadline: float) -> bool:
    while not path.exists():
        if time.time() > deadline:
            return False
        time.sleep(0.005)
    return True


def race(path: str, anchor: str, budget: float, secret_hex: str, release_id: str,
         epsilon: float, ready: str, start: str, deadline: float) -> dict[str, object]:
    """Open the ledger, say ready, wait for the start file, charge ``release_id`` once."""
    ledger = _ledger(path, anchor, budget, secret_hex)
    Path(ready).write_text(str(os.getpid()))
    if not _wait_for(Path(start), deadline):
        return {"release_id": release_id, "status": "no-start"}

    def compute() -> str:
        time.sleep(0.02)  # widen the window in which a racing process could interleave
        return json.dumps({"release_id": release_id, "pid": os.getpid(), "noise": time.time()})

    try:
        out = ledger.charge_and_record(release_id, "public_suite", "v1", epsilon, compute)
    except BudgetExceededError:
        return {"release_id": release_id, "status": "refused"}
    return {"release_id": release_id, "status": out.status, "seq": out.stamp.seq,
            "entry_hash": out.stamp.entry_hash}


def churn(path: str, anchor: str, budget: float, secret_hex: str, epsilon: float,
          releases: str, ready: str, seed: int, deadline: float) -> None:
    """Charge releases (some new, some repeats) until killed or past ``deadline``."""
    rng = random.Random(seed)

    def hook(stage: str) -> None:
        time.sleep(rng.uniform(0.0, 0.01))

    ledger = _ledger(path, anchor, budget, secret_hex)
    Path(ready).write_text(str(os.getpid()))
    i = 0
    while time.time() < deadline:
        i += 1
        # a few release ids recur across workers: served as stored, never charged twice
        rid = f"r{rng.randrange(10)}" if rng.random() < 0.3 else f"w{seed}-{i}"
        try:
            out = ledger.charge_and_record(
                rid, "public_suite", "v1", epsilon,
                lambda rid=rid: json.dumps({"release_id": rid, "noise": rng.random()}),
                _hook=hook,
            )
        except BudgetExceededError:
            time.sleep(0.01)
            continue
        except LedgerIntegrityError as exc:  # must never happen: report and stop
            print(json.dumps({"integrity": list(exc.problems)}), flush=True)
            return
        text = json.dumps({"ledger": out.stamp.as_dict(), "payload": out.entry.payload})
        write_atomic(Path(releases) / f"{rid}.json", text)


if __name__ == "__main__":
    mode, args = sys.argv[1], json.loads(sys.argv[2])
    if mode == "race":
        print(json.dumps(race(**args)), flush=True)
    elif mode == "churn":
        churn(**args)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
