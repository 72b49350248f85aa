"""Telemetry ingest, validation and engagement features.

Expected feature values are computed by hand from the tiny event log below (see the comments
next to each event) or, for random logs, by a deliberately naive pure-Python reference that
shares no code with the polars implementation.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.telemetry import (
    QUARANTINE_REASONS,
    EngagementConfig,
    TelemetryEventSchema,
    TelemetryInputError,
    compute_engagement_features,
    scan_events,
    validate_events,
)

UTC = dt.UTC


def t(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s).replace(tzinfo=UTC)


def events_frame(rows: list[tuple[str, str, str, float | None]]) -> pl.LazyFrame:
    return pl.DataFrame(
        {
            "participant_id": [r[0] for r in rows],
            "timestamp": [t(r[1]) for r in rows],
            "event": [r[2] for r in rows],
            "duration_s": [r[3] for r in rows],
        },
        schema={
            "participant_id": pl.String,
            "timestamp": pl.Datetime("us", "UTC"),
            "event": pl.String,
            "duration_s": pl.Float64,
        },
    ).lazy()


# -- tiny hand-computed log ------------------------------------------------------------
# window_days = 3, gap 30 min, late night [23:00, 05:00) UTC
TINY = [
    # A, wave 1 responds 2024-01-10 12:00 -> window [01-07 12:00, 01-10 12:00)
    ("A", "2024-01-07T11:50:00", "open", 60.0),  # before window; starts a session
    ("A", "2024-01-07T12:10:00", "exercise", 120.0),  # in; 20 min later: continues it
    ("A", "2024-01-07T23:30:00", "open", 30.0),  # in; late; new session
    ("A", "2024-01-08T00:00:00", "open", None),  # in; late; gap exactly 30 min: same session
    ("A", "2024-01-08T04:59:00", "exercise", 90.0),  # in; late (hour 4); new session
    ("A", "2024-01-08T05:00:00", "open", 60.0),  # in; not late (05:00); same session
    ("A", "2024-01-10T11:59:59", "open", 10.0),  # in; new session; last day of window
    ("A", "2024-01-10T12:00:00", "open", 20.0),  # at the response time: outside wave 1
    # D, wave 1 responds 2024-02-01 00:00 -> window [01-29 00:00, 02-01 00:00)
    ("D", "2024-01-28T23:59:59", "open", 5.0),  # 1 s before the window
    ("D", "2024-01-29T00:00:00", "open", 5.0),  # exactly at the window start: in
    ("D", "2024-01-31T23:59:00", "open", 5.0),  # in; last minute of the window
    # E has events but no survey row: ignored
    ("E", "2024-01-08T10:00:00", "open", 5.0),
]
WAVES = pl.DataFrame(
    {
        "participant_id": ["A", "A", "B", "C", "D"],
        "wave": [1, 2, 1, 1, 1],
        "timestamp": [
            t("2024-01-10T12:00:00"),
            t("2024-01-12T12:00:00"),  # window [01-09 12:00, 01-12 12:00): overlaps wave 1
            t("2024-01-10T12:00:00"),  # B has no events at all
            None,  # C did not respond: no window
            t("2024-02-01T00:00:00"),
        ],
    },
    schema={"participant_id": pl.String, "wave": pl.Int32, "timestamp": pl.Datetime("us", "UTC")},
)
CFG = EngagementConfig(window_days=3, session_gap_minutes=30)

EXPECTED = {
    # (pid, wave): events, active_days, sessions, minutes, late, share, streak
    ("A", 1): (6, 3, 4, (120 + 30 + 0 + 90 + 60 + 10) / 60, 3, 0.5, 2),
    ("A", 2): (2, 1, 1, (10 + 20) / 60, 0, 0.0, 1),
    ("B", 1): (0, 0, 0, 0.0, 0, None, 0),
    ("D", 1): (2, 2, 2, 10 / 60, 2, 1.0, 1),
}


@pytest.fixture(scope="module")
def tiny():
    return compute_engagement_features(events_frame(TINY), WAVES, CFG)


def test_tiny_log_features_match_hand_computation(tiny):
    f = tiny.features
    assert tiny.message == "ok"
    assert f.height == WAVES.height  # one row per wave row, E absent
    assert set(f["participant_id"]) == {"A", "B", "C", "D"}
    for (pid, wave), exp in EXPECTED.items():
        row = f.filter((pl.col("participant_id") == pid) & (pl.col("wave") == wave)).row(
            0, named=True
        )
        got = (
            row["events"],
            row["active_days"],
            row["sessions"],
            row["minutes"],
            row["late_night_events"],
            row["late_night_share"],
            row["longest_streak_days"],
        )
        assert got[:3] == exp[:3], (pid, wave, got)
        assert got[3] == pytest.approx(exp[3], abs=1e-12)
        assert got[4] == exp[4]
        if exp[5] is None:
            assert got[5] is None
        else:
            assert got[5] == pytest.approx(exp[5], abs=1e-12)
        assert got[6] == exp[6]


def test_no_events_are_zero_not_null_and_no_response_is_null(tiny):
    b = tiny.features.filter(pl.col("participant_id") == "B").row(0, named=True)
    for c in ("events", "active_days", "sessions", "late_night_events", "longest_streak_days"):
        assert b[c] == 0
    assert b["minutes"] == 0.0
    c = tiny.features.filter(pl.col("participant_id") == "C").row(0, named=True)
    assert c["events"] is None and c["response_time"] is None


def test_window_start_column(tiny):
    a1 = tiny.features.filter((pl.col("participant_id") == "A") & (pl.col("wave") == 1))
    assert a1["window_start"].item() == t("2024-01-07T12:00:00")


def test_events_by_type_is_tidy_with_zeros(tiny):
    by = tiny.events_by_type
    assert by.columns == ["participant_id", "wave", "event", "n"]
    got = {(r["participant_id"], r["wave"], r["event"]): r["n"] for r in by.iter_rows(named=True)}
    assert got == {
        ("A", 1, "exercise"): 2,
        ("A", 1, "open"): 4,
        ("A", 2, "exercise"): 0,
        ("A", 2, "open"): 2,
        ("B", 1, "exercise"): 0,
        ("B", 1, "open"): 0,
        ("D", 1, "exercise"): 0,
        ("D", 1, "open"): 2,
    }
    # per-type counts add up to the event count
    tot = by.group_by("participant_id", "wave").agg(pl.col("n").sum())
    joined = tot.join(tiny.features, on=["participant_id", "wave"])
    assert (joined["n"] == joined["events"]).all()


def test_configured_event_types_and_partitions_give_same_answer(tiny):
    cfg = EngagementConfig(window_days=3, event_types=("open", "exercise", "share"), n_partitions=3)
    res = compute_engagement_features(events_frame(TINY), WAVES, cfg)
    cols = [c for c in res.features.columns]
    assert res.features.select(cols).equals(tiny.features.select(cols))
    share = res.events_by_type.filter(pl.col("event") == "share")
    assert share.height == 4 and (share["n"] == 0).all()


def test_late_night_hours_configurable():
    cfg = EngagementConfig(window_days=3, late_night_start_hour=0, late_night_end_hour=5)
    res = compute_engagement_features(events_frame(TINY), WAVES, cfg)
    a1 = res.features.filter((pl.col("participant_id") == "A") & (pl.col("wave") == 1))
    assert a1["late_night_events"].item() == 2  # 23:30 no longer counts


def test_no_waves_and_no_events_messages():
    empty_waves = WAVES.clear()
    res = compute_engagement_features(events_frame(TINY), empty_waves, CFG)
    assert res.message == "no_waves" and res.features.height == 0
    res = compute_engagement_features(events_frame(TINY).clear(), WAVES, CFG)
    assert res.message == "no_events"
    assert res.features.filter(pl.col("response_time").is_not_null())["events"].to_list() == [
        0,
        0,
        0,
        0,
    ]


def test_config_rejects_programmer_errors():
    with pytest.raises(ValueError):
        EngagementConfig(window_days=0)
    with pytest.raises(ValueError):
        EngagementConfig(session_gap_minutes=0)
    with pytest.raises(ValueError):
        compute_engagement_features(events_frame(TINY), pl.concat([WAVES, WAVES]), CFG)


# -- random logs against a naive reference ----------------------------------------------


def naive_features(ev: pl.DataFrame, waves: pl.DataFrame, window_days: int, gap_min: float):
    """Loop-by-loop reference: sessions found on the whole stream, then windowed."""
    out = {}
    gap = dt.timedelta(minutes=gap_min)
    by_pid: dict[str, list[tuple[dt.datetime, float]]] = {}
    for r in ev.sort("participant_id", "timestamp").iter_rows(named=True):
        by_pid.setdefault(r["participant_id"], []).append((r["timestamp"], r["duration_s"] or 0))
    for w in waves.iter_rows(named=True):
        e = w["timestamp"]
        s = e - dt.timedelta(days=window_days)
        stream = by_pid.get(w["participant_id"], [])
        session_id, sid, prev = [], 0, None
        for ts, _ in stream:
            if prev is None or ts - prev > gap:
                sid += 1
            session_id.append(sid)
            prev = ts
        inside = [i for i, (ts, _) in enumerate(stream) if s <= ts < e]
        days = sorted({stream[i][0].date() for i in inside})
        best = run = 0
        for j, d in enumerate(days):
            run = run + 1 if j and (d - days[j - 1]).days == 1 else 1
            best = max(best, run)
        late = sum(1 for i in inside if stream[i][0].hour >= 23 or stream[i][0].hour < 5)
        out[(w["participant_id"], w["wave"])] = (
            len(inside),
            len(days),
            len({session_id[i] for i in inside}),
            sum(stream[i][1] for i in inside) / 60,
            late,
            best,
        )
    return out


def random_log(seed: int, n_events: int, n_people: int):
    rng = np.random.default_rng(seed)
    t0 = dt.datetime(2024, 3, 1, tzinfo=UTC)
    # clustered events: bursts of a few minutes apart, bursts hours/days apart
    offsets_min = rng.integers(0, 40 * 24 * 60, n_events) + rng.choice([0, 1, 29, 30, 31], n_events)
    ev = pl.DataFrame(
        {
            "participant_id": rng.choice([f"p{i}" for i in range(n_people)], n_events),
            "timestamp": [t0 + dt.timedelta(minutes=int(m)) for m in offsets_min],
            "event": rng.choice(["open", "exercise", "journal"], n_events),
            "duration_s": np.where(
                rng.random(n_events) < 0.1, np.nan, rng.exponential(60, n_events)
            ),
        }
    ).with_columns(pl.col("duration_s").fill_nan(None), pl.col("timestamp").dt.cast_time_unit("us"))
    waves = pl.DataFrame(
        {
            "participant_id": [f"p{i}" for i in range(n_people) for _ in range(3)],
            "wave": [k for _ in range(n_people) for k in range(3)],
            # waves 5 days apart with a 7-day window: windows overlap
            "timestamp": [
                t0 + dt.timedelta(days=8 + 5 * k, minutes=int(rng.integers(0, 1440)))
                for _ in range(n_people)
                for k in range(3)
            ],
        }
    ).with_columns(pl.col("wave").cast(pl.Int32), pl.col("timestamp").dt.cast_time_unit("us"))
    return ev, waves


@pytest.mark.parametrize("seed", [1, 2])
def test_random_log_matches_naive_reference(seed):
    ev, waves = random_log(seed, n_events=3000, n_people=12)
    res = compute_engagement_features(ev.lazy(), waves, EngagementConfig(window_days=7))
    ref = naive_features(ev, waves, 7, 30)
    for r in res.features.iter_rows(named=True):
        exp = ref[(r["participant_id"], r["wave"])]
        got = (
            r["events"],
            r["active_days"],
            r["sessions"],
            r["minutes"],
            r["late_night_events"],
            r["longest_streak_days"],
        )
        assert got[:3] == exp[:3]
        assert got[3] == pytest.approx(exp[3], rel=1e-9, abs=1e-9)
        assert got[4:] == exp[4:]


@settings(max_examples=25, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 6 * 24 * 60), min_size=0, max_size=40),
    resp=st.integers(2 * 24 * 60, 6 * 24 * 60),
    window=st.integers(1, 3),
    gap=st.sampled_from([1.0, 30.0, 90.0]),
)
def test_property_matches_naive_reference(offsets, resp, window, gap):
    t0 = dt.datetime(2024, 5, 1, tzinfo=UTC)
    ev = pl.DataFrame(
        {
            "participant_id": ["x"] * len(offsets),
            "timestamp": [t0 + dt.timedelta(minutes=m) for m in offsets],
            "event": ["open"] * len(offsets),
            "duration_s": [30.0] * len(offsets),
        },
        schema={
            "participant_id": pl.String,
            "timestamp": pl.Datetime("us", "UTC"),
            "event": pl.String,
            "duration_s": pl.Float64,
        },
    )
    waves = pl.DataFrame(
        {"participant_id": ["x"], "wave": [0], "timestamp": [t0 + dt.timedelta(minutes=resp)]},
        schema={
            "participant_id": pl.String,
            "wave": pl.Int32,
            "timestamp": pl.Datetime("us", "UTC"),
        },
    )
    res = compute_engagement_features(
        ev.lazy(), waves, EngagementConfig(window_days=window, session_gap_minutes=gap)
    )
    r = res.features.row(0, named=True)
    exp = naive_features(ev, waves, window, gap)[("x", 0)]
    got = (
        r["events"],
        r["active_days"],
        r["sessions"],
        r["minutes"],
        r["late_night_events"],
        r["longest_streak_days"],
    )
    assert got[:3] == exp[:3] and got[4:] == exp[4:]
    assert got[3] == pytest.approx(exp[3])


# -- ingest and validation ----------------------------------------------------------------

CSV_TEXT = """participant_id,timestamp,event,duration_s,properties
p1,2024-01-01T10:00:00Z,open,12.5,{}
,2024-01-01T10:00:00Z,open,1,
p2,yesterday,open,1,
p3,,open,1,
p1,2024-01-01T11:00:00+02:00,,1,
p1,2024-01-01 12:00:00,open,abc,
p1,2024-01-01T13:00:00,open,-4,
p9,2024-01-01T14:00:00,open,,
p2,2024-01-02,exercise,,
p2,2024-01-02T08:00:00,exercise,nan,
"""


@pytest.fixture()
def event_files(tmp_path: Path) -> tuple[Path, Path]:
    csv = tmp_path / "events.csv"
    csv.write_text(CSV_TEXT)
    pq = tmp_path / "events.parquet"
    pl.DataFrame(
        {
            "participant_id": ["p1", None, "p2"],
            "timestamp": [t("2024-01-03T00:00:00"), t("2024-01-03T01:00:00"), None],
            "event": ["open", "open", "open"],
            "duration_s": [3.0, 1.0, 1.0],
        }
    ).write_parquet(pq)
    return csv, pq


def test_validation_reasons_and_row_accounting(event_files):
    csv, pq = event_files
    res = validate_events(scan_events([csv, pq]), participant_ids=pl.Series(["p1", "p2", "p3"]))
    n_csv = len(CSV_TEXT.strip().splitlines()) - 1  # data rows, counted independently
    assert res.rows_in == n_csv + 3
    assert res.rows_in == res.rows_accepted + res.rows_quarantined
    assert res.message == "rows_quarantined"
    q = res.quarantine
    got = {(Path(r["source"]).name, r["row"]): r["reason"] for r in q.iter_rows(named=True)}
    assert got == {
        ("events.csv", 2): "missing_participant_id",
        ("events.csv", 3): "unparseable_timestamp",
        ("events.csv", 4): "missing_timestamp",
        ("events.csv", 5): "missing_event",
        ("events.csv", 6): "non_numeric_duration",
        ("events.csv", 7): "negative_duration",
        ("events.csv", 8): "unknown_participant",
        ("events.csv", 10): "non_numeric_duration",
        ("events.parquet", 2): "missing_participant_id",
        ("events.parquet", 3): "missing_timestamp",
    }
    assert set(q["reason"]) <= set(QUARANTINE_REASONS)
    bad_ts = q.filter(pl.col("reason") == "unparseable_timestamp").row(0, named=True)
    assert (bad_ts["column"], bad_ts["value"]) == ("timestamp", "yesterday")
    neg = q.filter(pl.col("reason") == "negative_duration").row(0, named=True)
    assert (neg["column"], neg["value"]) == ("duration_s", "-4")
    assert q.columns == ["source", "row", "participant_id", "wave", "column", "value", "reason"]

    acc = res.accepted.collect()
    TelemetryEventSchema.validate(acc)  # value checks on the eager frame
    assert acc.height == res.rows_accepted == 3  # csv rows 1 and 9, parquet row 1
    first = acc.filter((pl.col("row") == 1) & pl.col("source").str.ends_with(".csv"))
    assert first["timestamp"].item() == t("2024-01-01T10:00:00")
    assert first["duration_s"].item() == 12.5
    date_only = acc.filter((pl.col("row") == 9) & pl.col("source").str.ends_with(".csv"))
    assert date_only["timestamp"].item() == t("2024-01-02T00:00:00")
    assert date_only["duration_s"].item() is None
    # summary adds up per source
    per_source = res.summary.group_by("source").agg(pl.col("n").sum()).sort("source")
    assert per_source["n"].to_list() == [n_csv, 3]
    assert res.counts_by_reason()["non_numeric_duration"] == 2


def test_offsets_convert_to_utc(event_files, tmp_path):
    p = tmp_path / "tz.csv"
    p.write_text("participant_id,timestamp,event\np1,2024-01-01T11:00:00+02:00,open\n")
    acc = validate_events(scan_events(p)).accepted.collect()
    assert acc["timestamp"].item() == t("2024-01-01T09:00:00")


def test_without_participant_table_unknown_ids_pass(event_files):
    csv, _ = event_files
    res = validate_events(scan_events(csv))
    assert "unknown_participant" not in res.counts_by_reason()
    assert res.rows_in == res.rows_accepted + res.rows_quarantined


def test_accepted_can_be_sunk_to_parquet(event_files, tmp_path):
    csv, pq = event_files
    res = validate_events(scan_events(str(csv.parent / "events.*")))
    out = tmp_path / "accepted.parquet"
    res.accepted.sink_parquet(out)
    assert pl.read_parquet(out).height == res.rows_accepted


def test_unusable_inputs_raise_with_file_and_column(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("participant_id,time,event\np1,2024-01-01,open\n")
    with pytest.raises(TelemetryInputError, match="timestamp"):
        scan_events(bad)
    with pytest.raises(TelemetryInputError, match="no file matches"):
        scan_events(str(tmp_path / "nothing*.parquet"))
    with pytest.raises(TelemetryInputError, match="not found"):
        scan_events(tmp_path / "missing.csv")


def test_empty_file_is_no_rows(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_text("participant_id,timestamp,event\n")
    res = validate_events(scan_events(p))
    assert (res.rows_in, res.message) == (0, "no_rows")


@settings(max_examples=20, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["p1", "p2", "", "zz"]),
            st.sampled_from(["2024-01-01T00:00:00", "", "bad", "2024-02-30T00:00:00"]),
            st.sampled_from(["open", ""]),
            st.sampled_from(["", "1", "-1", "x", "2.5"]),
        ),
        max_size=30,
    )
)
def test_property_row_accounting(tmp_path_factory, rows):
    p = tmp_path_factory.mktemp("acc") / "e.csv"
    lines = ["participant_id,timestamp,event,duration_s"] + [",".join(r) for r in rows]
    p.write_text("\n".join(lines) + "\n")
    res = validate_events(scan_events(p), participant_ids=pl.Series(["p1", "p2"]))
    assert res.rows_in == len(rows)
    assert res.rows_accepted + res.rows_quarantined == len(rows)
    assert res.quarantine.height == res.rows_quarantined
    assert res.accepted.collect().height == res.rows_accepted
    assert sorted(
        res.quarantine["row"].to_list() + res.accepted.collect()["row"].to_list()
    ) == list(range(1, len(rows) + 1))


def test_one_window_per_sort_chunk_gives_same_features(tiny, monkeypatch):
    import models.telemetry as tel

    monkeypatch.setattr(tel, "_KEY_LIMIT", 1)  # every window its own sort chunk
    res = compute_engagement_features(events_frame(TINY), WAVES, CFG)
    assert res.features.equals(tiny.features)
    assert res.events_by_type.equals(tiny.events_by_type)


def test_tiny_table_batches_and_slices_give_same_features(tiny, monkeypatch):
    import models.telemetry as tel

    monkeypatch.setattr(tel, "_TABLE_CELLS", 1)  # one time bucket: long walks to the window
    monkeypatch.setattr(tel, "_BATCH_ROWS", 3)
    monkeypatch.setattr(tel, "_SLICE_ROWS", 2)
    res = compute_engagement_features(events_frame(TINY), WAVES, CFG)
    assert res.features.equals(tiny.features)
    assert res.events_by_type.equals(tiny.events_by_type)


# -- edge-case-rich random logs against an independent reference --------------------------


def reference_engagement(events: list[tuple], waves: list[tuple], cfg: EngagementConfig):
    """Event-by-event reference on Python datetimes, written from the feature definitions.

    ``events``: (participant_id, timestamp, event, duration_s or None); ``waves``:
    (participant_id, wave, response time or None). Returns {(pid, wave): features} with the
    per-type counts under "by_type" (every configured/seen type, zeros included).
    """
    gap = dt.timedelta(minutes=cfg.session_gap_minutes)
    window = dt.timedelta(days=cfg.window_days)
    types = sorted(set(cfg.event_types) if cfg.event_types is not None else {e[2] for e in events})
    start_h, end_h = cfg.late_night_start_hour, cfg.late_night_end_hour

    def is_late(ts: dt.datetime) -> bool:
        if start_h < end_h:
            return start_h <= ts.hour < end_h
        return ts.hour >= start_h or ts.hour < end_h

    out = {}
    for pid, wave, resp in waves:
        if resp is None:
            out[(pid, wave)] = None
            continue
        stream = sorted((e for e in events if e[0] == pid), key=lambda e: e[1])
        # session number of every event of the whole stream
        session_of, n_sessions, previous = [], 0, None
        for e in stream:
            if previous is None or e[1] - previous > gap:
                n_sessions += 1
            session_of.append(n_sessions)
            previous = e[1]
        lo = resp - window
        inside = [j for j, e in enumerate(stream) if lo <= e[1] < resp]
        days = sorted({stream[j][1].date() for j in inside})
        longest = run = 0
        for j, day in enumerate(days):
            run = run + 1 if j and day - days[j - 1] == dt.timedelta(days=1) else 1
            longest = max(longest, run)
        n = len(inside)
        late = sum(is_late(stream[j][1]) for j in inside)
        out[(pid, wave)] = {
            "events": n,
            "active_days": len(days),
            "sessions": len({session_of[j] for j in inside}),
            "minutes": sum(stream[j][3] or 0.0 for j in inside) / 60,
            "late_night_events": late,
            "late_night_share": late / n if n else None,
            "longest_streak_days": longest,
            "by_type": {k: sum(stream[j][2] == k for j in inside) for k in types},
        }
    return out


def edge_case_log(seed: int):
    """A small random study whose events crowd every boundary the features have."""
    rng = np.random.default_rng(seed)
    cfg = EngagementConfig(
        window_days=int(rng.integers(1, 5)),
        session_gap_minutes=float(rng.choice([1.0, 7.5, 30.0, 180.0])),
        late_night_start_hour=int(rng.choice([23, 0, 22])),
        late_night_end_hour=int(rng.choice([5, 6])),
        event_types=None if seed % 2 else ("open", "exercise", "never_seen"),
        n_partitions=int(rng.integers(1, 4)),
    )
    us = dt.timedelta(microseconds=1)
    gap = dt.timedelta(minutes=cfg.session_gap_minutes)
    window = dt.timedelta(days=cfg.window_days)
    t0 = dt.datetime(2024, 2, 27, tzinfo=UTC)  # the span crosses 29 February
    people = [f"p{i}" for i in range(9)]
    waves, events = [], []
    for k, pid in enumerate(people):
        times = []
        for wave in range(int(rng.integers(1, 5))):
            # responses at midnight, on the hour or at a random microsecond; some equal
            day = t0 + dt.timedelta(days=int(rng.integers(2, 12)))
            kind = rng.integers(0, 4)
            if kind == 0:
                resp = day
            elif kind == 1:
                resp = day + dt.timedelta(hours=int(rng.integers(0, 24)))
            elif kind == 2 and times:
                resp = times[-1]  # two waves answered at the same moment
            else:
                resp = day + dt.timedelta(microseconds=int(rng.integers(0, 86_400 * 10**6)))
            times.append(resp)
            waves.append((pid, wave, resp))
        if k == 0:
            waves.append((pid, 9, None))  # did not respond: no window
        if k == 1:
            continue  # p1 has waves but no events at all
        anchors = []
        for resp in times:
            s = resp - window
            anchors += [s, s - us, s + us, resp, resp - us, s - gap, s - gap - us, s - gap + us]
        for _ in range(int(rng.integers(5, 40))):
            base = t0 + dt.timedelta(days=int(rng.integers(0, 14)))
            hour, minute = int(rng.choice([0, 4, 5, 22, 23])), int(rng.integers(0, 60))
            anchors.append(base + dt.timedelta(hours=hour, minutes=minute))
            anchors.append(base.replace(hour=23, minute=59, second=59, microsecond=999_999))
            anchors.append(base + dt.timedelta(hours=5) - us)
        # bursts: chains at exactly the gap, just over it, and duplicates
        for a in list(anchors):
            if rng.random() < 0.3:
                step = gap + us * int(rng.choice([0, 1, -1]))
                anchors += [a + step, a + 2 * step, a]
        for a in anchors:
            if rng.random() < 0.8:
                kind = str(rng.choice(["open", "exercise", "journal"]))
                dur = None if rng.random() < 0.15 else float(np.round(rng.exponential(40), 3))
                events.append((pid, a, kind, dur))
    events.append(("stranger", t0 + dt.timedelta(days=5), "open", 10.0))  # no survey row
    order = rng.permutation(len(events))  # input order must not matter
    events = [events[j] for j in order]
    return events, waves, cfg


@pytest.mark.parametrize("seed", range(8))
def test_edge_case_logs_match_reference(seed):
    events, waves, cfg = edge_case_log(seed)
    ev = pl.DataFrame(
        events,
        schema={
            "participant_id": pl.String,
            "timestamp": pl.Datetime("us", "UTC"),
            "event": pl.String,
            "duration_s": pl.Float64,
        },
        orient="row",
    )
    wv = pl.DataFrame(
        waves,
        schema={"participant_id": pl.String, "wave": pl.Int32, "timestamp": pl.Datetime("us", "UTC")},
        orient="row",
    )
    res = compute_engagement_features(ev.lazy(), wv, cfg)
    ref = reference_engagement(events, waves, cfg)
    assert res.features.height == len(waves)
    for row in res.features.iter_rows(named=True):
        exp = ref[(row["participant_id"], row["wave"])]
        if exp is None:
            assert row["events"] is None and row["sessions"] is None
            continue
        for name in ("events", "active_days", "sessions", "late_night_events", "longest_streak_days"):
            assert row[name] == exp[name], (seed, row["participant_id"], row["wave"], name)
        assert row["minutes"] == pytest.approx(exp["minutes"], rel=1e-12, abs=1e-12)
        if exp["late_night_share"] is None:
            assert row["late_night_share"] is None
        else:
            assert row["late_night_share"] == pytest.approx(exp["late_night_share"], rel=1e-12)
    got = {
        (r["participant_id"], r["wave"], r["event"]): r["n"]
        for r in res.events_by_type.iter_rows(named=True)
    }
    want = {
        (pid, wave, kind): n
        for (pid, wave), exp in ref.items()
        if exp is not None
        for kind, n in exp["by_type"].items()
    }
    assert got == want
    # the tidy table is ordered by participant, wave, event
    assert res.events_by_type.select("participant_id", "wave", "event").equals(
        res.events_by_type.select("participant_id", "wave", "event").sort(
            "participant_id", "wave", "event"
        )
    )


def test_participant_range_without_events_in_sort_chunks(monkeypatch):
    import models.telemetry as tel

    monkeypatch.setattr(tel, "_KEY_LIMIT", 1)  # many sort chunks per participant range
    cfg = EngagementConfig(window_days=3, n_partitions=5)  # ranges of one participant
    res = compute_engagement_features(events_frame(TINY), WAVES, cfg)
    base = compute_engagement_features(events_frame(TINY), WAVES, CFG)
    assert res.features.equals(base.features)
    assert res.events_by_type.equals(base.events_by_type)
