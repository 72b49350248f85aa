"""The public tier as a user meets it: the demo's accuracy, and a ledger no one can reset.

A 1,000-participant demo (the README's) is written, sealed and run once for this module;
each attack then works on its own copy of the study folder and drives the real CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from privacy.objects import StoredRelease

REPO = Path(__file__).resolve().parents[2]
UNUSED_INSTRUMENTS = ("swls", "dfs", "perma", "Satisfaction with Life", "PERMA", "Flourishing Scale")


def _flourish(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestration.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def demo1000(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from models.plan import lock_plan
    from orchestration.demo import DemoStudyConfig, write_demo_study
    from orchestration.run import run_study

    root = tmp_path_factory.mktemp("demo1000")
    demo = write_demo_study(root, DemoStudyConfig(n_participants=1000))
    lock_plan(demo.plan_path, outcome_rows=0)
    outcome = run_study(demo.study_path, progress=False)
    assert outcome.success, outcome.summary_text
    return {"study": Path(demo.study_path), "out": Path(demo.study_path).parent / "out"}


def _release(out: Path) -> StoredRelease:
    files = sorted((out / "releases").glob("*.json"))
    assert len(files) == 1, files
    return StoredRelease.from_json(files[0].read_text())


def _copy(demo: dict, tmp_path: Path) -> Path:
    dst = tmp_path / "study"
    shutil.copytree(demo["study"].parent, dst)
    return dst / "study.toml"


def _snapshot(study_dir: Path) -> dict[str, bytes]:
    out = study_dir / "out"
    files = sorted((out / "releases").glob("*.json")) + [out / "report" / "index.html"]
    return {str(p): p.read_bytes() for p in files if p.exists()}


# ---------------------------------------------------------------------- accuracy


def test_demo_primary_effect_and_final_means_are_useful(demo1000: dict) -> None:
    stored = _release(demo1000["out"])
    rel = stored.release
    assert rel.epsilon == pytest.approx(3.0)
    effect = rel.figure("effect:who5.total@4")
    assert effect.released, effect.reason
    v = effect.values[0]
    effects = pl.read_parquet(demo1000["out"] / "effects.parquet")
    h1 = effects.filter(pl.col("hypothesis") == "H1").row(0, named=True)
    ratio = (v["ci_high"] - v["ci_low"]) / (h1["ci_high"] - h1["ci_low"])
    print("DP / ANCOVA interval width", ratio)
    assert ratio <= 2.5
    means = rel.figure("means:who5.total")
    assert means.released and means.planned_margin <= 5.0
    final = [r for r in means.values if r["wave"] == 4]
    assert {r["arm"] for r in final} == {"control", "treatment"}
    for r in final:
        assert r["margin"] <= 5.0, r
    domains = [f for f in rel.figures if f.outcome.startswith("flourish12.")]
    assert len(domains) == 6 and all(f.released for f in domains)


def test_no_release_or_report_mentions_an_unused_instrument(demo1000: dict) -> None:
    text = (demo1000["out"] / "report" / "index.html").read_text()
    text += "".join(p.read_text() for p in (demo1000["out"] / "releases").glob("*.json"))
    for name in UNUSED_INSTRUMENTS:
        assert name not in text, name


def test_dry_run_spends_nothing_and_states_accuracy(demo1000: dict, tmp_path: Path) -> None:
    spec = _copy(demo1000, tmp_path)
    ledger = spec.parent / "privacy_ledger.sqlite"
    before = ledger.read_bytes()
    proc = _flourish("release", str(spec), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "nothing spent" in proc.stdout and "effect:who5.total@4" in proc.stdout
    assert "NOT enough" in proc.stdout  # the demo's run already spent the budget
    assert ledger.read_bytes() == before


# ---------------------------------------------------------------------- budget


def test_release_is_served_then_a_new_data_version_is_refused(demo1000: dict, tmp_path: Path) -> None:
    spec = _copy(demo1000, tmp_path)
    again = _flourish("release", str(spec))
    assert again.returncode == 0, again.stderr
    assert "(cached)" in again.stdout and "spent now 0" in again.stdout
    _second_version(spec)
    before = _snapshot(spec.parent)
    refused = _flourish("release", str(spec))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "remain" in refused.stderr.lower() and "Traceback" not in refused.stderr
    assert _snapshot(spec.parent) == before
    ledger = _flourish("ledger", str(spec))
    assert ledger.returncode == 0, ledger.stdout + ledger.stderr
    assert "left 0" in ledger.stdout


def test_new_pseudonym_key_over_the_same_responses_spends_nothing(demo1000: dict,
                                                                  tmp_path: Path) -> None:
    from orchestration.public import release_and_report  # noqa: F401 (import check)

    spec = _copy(demo1000, tmp_path)
    out = spec.parent / "out"
    # re-key every pseudonym (as a new key would) without changing any response
    remap = lambda df: df.with_columns(  # noqa: E731
        pl.col("participant_id").str.reverse().alias("participant_id"))
    for name in ("scores.parquet", "participants.parquet"):
        remap(pl.read_parquet(out / name)).write_parquet(out / name)
    proc = _flourish("release", str(spec))
    assert proc.returncode == 0, proc.stderr
    assert "(cached)" in proc.stdout


# ---------------------------------------------------------------------- ledger attacks


def _second_version(spec: Path, k: int = 0) -> None:
    """A new data version: drop one scored WHO-5 total (a null score is not public data,
    so dropping one of those would leave the data version, rightly, unchanged)."""
    scores_path = spec.parent / "out" / "scores.parquet"
    scores = pl.read_parquet(scores_path).with_row_index("_i")
    counted = scores.filter((pl.col("scale") == "total") & pl.col("score").is_not_null())
    drop = counted["_i"][k]
    scores.filter(pl.col("_i") != drop).drop("_i").write_parquet(scores_path)


def _assert_refused(spec: Path, before: dict[str, bytes], *words: str) -> str:
    proc = _flourish("release", str(spec))
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    assert "Traceback" not in text and "nothing was released" in text
    for w in words:
        assert w in text.lower(), (w, text)
    assert _snapshot(spec.parent) == before  # nothing released, no file touched
    led = _flourish("ledger", str(spec))
    assert led.returncode == 1, led.stdout + led.stderr
    return text


def _never_released(d: Path) -> None:
    """Make a copied study one that has never released: no ledger, no anchors, no files."""
    for name in ("privacy_ledger.sqlite", "privacy_ledger.sqlite-wal", "privacy_ledger.sqlite-shm",
                 "privacy_ledger.anchor.json"):
        (d / name).unlink(missing_ok=True)
    shutil.rmtree(d / "out" / "releases", ignore_errors=True)
    (d / "out" / "report" / "index.html").unlink(missing_ok=True)


def _with_budget(demo: dict, tmp_path: Path, epsilon: float) -> Path:
    """A copy whose ledger is fresh with a larger budget: room for a second suite."""
    spec = _copy(demo, tmp_path)
    d = spec.parent
    _never_released(d)
    text = spec.read_text().replace("epsilon = 3.0", f"epsilon = {epsilon}")
    spec.write_text(text)
    import yaml

    from models.plan import lock_plan

    plan_file = d / "analysis_plan.yaml"
    plan = yaml.safe_load(plan_file.read_text())
    plan["public"]["epsilon"] = 3.0  # each suite spends 3 of the larger budget
    plan_file.write_text(yaml.safe_dump(plan, sort_keys=False))
    lock_plan(plan_file, outcome_rows=0, overwrite=True)
    first = _flourish("release", str(spec))
    assert first.returncode == 0, first.stdout + first.stderr
    return spec


def test_deleted_ledger_is_refused(demo1000: dict, tmp_path: Path) -> None:
    spec = _copy(demo1000, tmp_path)
    for p in spec.parent.glob("privacy_ledger.sqlite*"):
        p.unlink()
    _second_version(spec)
    _assert_refused(spec, _snapshot(spec.parent))


def test_deleted_ledger_and_anchor_file_still_refused_by_published_heads(demo1000: dict,
                                                                          tmp_path: Path) -> None:
    spec = _copy(demo1000, tmp_path)
    for p in spec.parent.glob("privacy_ledger.*"):
        p.unlink()
    _second_version(spec)
    _assert_refused(spec, _snapshot(spec.parent), "releases")


def test_rolled_back_ledger_is_refused(demo1000: dict, tmp_path: Path) -> None:
    spec = _with_budget(demo1000, tmp_path, 6.0)
    d = spec.parent
    backup = tmp_path / "backup"
    backup.mkdir()
    for p in d.glob("privacy_ledger.sqlite*"):
        shutil.copy2(p, backup / p.name)
    _second_version(spec)
    second = _flourish("release", str(spec))
    assert second.returncode == 0, second.stdout + second.stderr
    for p in d.glob("privacy_ledger.sqlite*"):
        p.unlink()
    for p in backup.iterdir():
        shutil.copy2(p, d / p.name)
    _second_version(spec)  # a third data version, on the rolled-back ledger
    _assert_refused(spec, _snapshot(d))


def test_relocated_ledger_is_refused(demo1000: dict, tmp_path: Path) -> None:
    spec = _copy(demo1000, tmp_path)
    text = spec.read_text().replace("[privacy]\n", '[privacy]\nledger = "elsewhere.sqlite"\n')
    spec.write_text(text)
    _second_version(spec)
    _assert_refused(spec, _snapshot(spec.parent))


@pytest.mark.parametrize("recompute_unkeyed_chain", [False, True])
def test_rewritten_ledger_is_refused(demo1000: dict, tmp_path: Path,
                                     recompute_unkeyed_chain: bool) -> None:
    import hashlib

    spec = _with_budget(demo1000, tmp_path, 6.0)
    path = spec.parent / "privacy_ledger.sqlite"
    con = sqlite3.connect(path)
    con.execute("DROP TRIGGER entries_no_update")
    con.execute("UPDATE entries SET epsilon = 0.0")
    if recompute_unkeyed_chain:  # what an attacker without the secret can do
        rows = con.execute("SELECT seq, release_id, kind, data_version, epsilon, payload, "
                           "created_at, prev_hash FROM entries ORDER BY seq").fetchall()
        prev = rows[0][7]
        for seq, rid, kind, dv, eps, payload, created, _ in rows:
            h = hashlib.sha256("\x1f".join([prev, str(seq), rid, kind, dv, repr(eps),
                               hashlib.sha256(payload.encode()).hexdigest(), created])
                               .encode()).hexdigest()
            con.execute("UPDATE entries SET prev_hash = ?, entry_hash = ? WHERE seq = ?",
                        (prev, h, seq))
            prev = h
    con.commit()
    con.close()
    _second_version(spec)
    _assert_refused(spec, _snapshot(spec.parent))


def test_raised_budget_in_the_ledger_is_refused(demo1000: dict, tmp_path: Path) -> None:
    spec = _copy(demo1000, tmp_path)
    path = spec.parent / "privacy_ledger.sqlite"
    con = sqlite3.connect(path)
    con.execute("DROP TRIGGER meta_no_update")
    con.execute("UPDATE meta SET value = '100.0' WHERE key = 'budget'")
    con.commit()
    con.close()
    spec.write_text(spec.read_text().replace("epsilon = 3.0", "epsilon = 100.0"))
    _second_version(spec)
    _assert_refused(spec, _snapshot(spec.parent))


# ---------------------------------------------------------------------- concurrency


def test_six_concurrent_releases_never_split_or_overspend(demo1000: dict, tmp_path: Path) -> None:
    """Six `flourish release` processes, each on its own data version, one budget for one
    suite: exactly one is charged, the others are refused (exit 1) and every file verifies."""
    spec = _copy(demo1000, tmp_path)
    d = spec.parent
    _never_released(d)
    scores = pl.read_parquet(d / "out" / "scores.parquet")
    specs = []
    for k in range(6):  # six output folders sharing the study's ledger: six data versions
        out_k = d / f"out{k}"
        shutil.copytree(d / "out", out_k)
        counted = scores.with_row_index("_i").filter(
            (pl.col("scale") == "total") & pl.col("score").is_not_null())["_i"]
        scores.with_row_index("_i").filter(pl.col("_i") != counted[k]).drop("_i").write_parquet(
            out_k / "scores.parquet")
        s = d / f"study{k}.toml"
        s.write_text(spec.read_text().replace('output_dir = "out"', f'output_dir = "out{k}"'))
        specs.append(s)
    start = time.time() + 8.0
    code = ("import sys,time; from orchestration.cli import main; "
            f"time.sleep(max(0.0, {start} - time.time())); sys.exit(main(['release', sys.argv[1]]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(s)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in specs]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=240)
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    codes = sorted(r[0] for r in results)
    assert codes == [0, 1, 1, 1, 1, 1], results
    for _code, _out, err in results:
        assert "Traceback" not in err, err
    from orchestration.keys import open_study_ledger
    from orchestration.spec import load_study_spec

    ledger = open_study_ledger(load_study_spec(spec), create=False)
    summary = ledger.summary()
    assert summary.n_releases == 1 and summary.spent == pytest.approx(3.0)
    files = [p for k in range(6) for p in (d / f"out{k}" / "releases").glob("*.json")]
    assert len(files) == 1
    stored = StoredRelease.from_json(files[0].read_text())
    assert ledger.verify_stored(stored.stamp, stored.release.to_json())
    assert json.loads(files[0].read_text())["ledger"]["seq"] == 1


def test_silently_changed_pseudonym_key_is_refused_not_respent(demo1000: dict,
                                                               tmp_path: Path) -> None:
    spec = _copy(demo1000, tmp_path)
    key = spec.parent / "pseudonym.key"
    key.write_text("cd" * 32 + "\n")  # another valid key, same responses
    _second_version(spec)
    text = _assert_refused(spec, _snapshot(spec.parent))
    assert "pseudonym key" in text.lower()
