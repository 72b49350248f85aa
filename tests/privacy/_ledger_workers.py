"""Worker functions for the ledger's multi-process tests (importable by spawned children)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from privacy.ledger import BudgetExceededError, PrivacyLedger


def release_worker(path: str, budget: float, release_id: str, epsilon: float, barrier) -> str:
    """Try to charge one release; 'charged', 'cached' or 'refused'."""
    ledger = PrivacyLedger(path, budget)
    barrier.wait()

    def compute() -> str:
        time.sleep(0.05)  # widen the window in which a racing process could interleave
        return json.dumps({"release_id": release_id, "pid": os.getpid(), "noise": time.time()})

    try:
        out = ledger.charge_and_record(release_id, "count", "v1", epsilon, compute)
    except BudgetExceededError:
        return "refused"
    return out.status


def main_kill_target(path: str, flag: str) -> None:
    """Start a release and block inside the transaction (after the insert) until killed."""
    ledger = PrivacyLedger(path, 3.0)

    def hook() -> None:
        Path(flag).write_text("inside")
        time.sleep(60)

    ledger.charge_and_record("victim", "count", "v1", 1.0, lambda: '{"n": 1}', _hook=hook)


if __name__ == "__main__":
    main_kill_target(sys.argv[1], sys.argv[2])
