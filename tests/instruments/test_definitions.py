"""Instrument definition files: every shipped file loads and encodes the published facts;
malformed files fail with an error naming the file and the field; study folders extend the
library without redefining anything.

Expected values come from the cited sources (INSTRUMENTS.md and the instruments' papers),
never from the code under test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from instruments.catalog import format_instrument, format_instrument_list
from instruments.definition import (
    BUILTIN_DIR,
    InstrumentDefinitionError,
    load_instrument,
    load_library,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "instruments"
MALFORMED = DATA / "malformed"
SHIPPED = sorted(p for p in BUILTIN_DIR.iterdir() if p.suffix in {".yaml", ".yml", ".toml"})


# --- every shipped file loads ------------------------------------------------------------


def test_the_five_instruments_are_shipped() -> None:
    assert load_library().ids() == ["dfs", "flourish12", "perma", "swls", "who5"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_file_loads_and_is_named_for_its_id(path: Path) -> None:
    spec = load_instrument(path)
    assert spec.id == path.stem
    # Every response scale has anchor labels for at least its two ends.
    for it in spec.items:
        r = it.response or spec.response
        assert {r.min, r.max} <= set(r.anchors), it.id
    # Shipped wording only where the licence allows it; paraphrases say so.
    if not spec.licence.ships_items:
        assert all(it.text.startswith("(paraphrase)") for it in spec.items)
    assert spec.citation


@pytest.mark.parametrize("path", sorted(DATA.glob("*.yaml")), ids=lambda p: p.stem)
def test_test_only_definitions_load(path: Path) -> None:
    assert load_instrument(path).id == path.stem


# --- published facts (INSTRUMENTS.md, checked against the sources) -----------------------

# instrument: (item prefix, number of items, response min, max, {scale: (min, max)})
FACTS = {
    "who5": ("who5", 5, 0, 5, {"raw": (0, 25), "total": (0, 100)}),
    "swls": ("swls", 5, 1, 7, {"total": (5, 35)}),
    "dfs": ("dfs", 8, 1, 7, {"total": (8, 56)}),
    "flourish12": (
        "flourish",
        12,
        0,
        10,
        {
            "happiness_life_satisfaction": (0, 10),
            "mental_physical_health": (0, 10),
            "meaning_purpose": (0, 10),
            "character_virtue": (0, 10),
            "close_social_relationships": (0, 10),
            "financial_material_stability": (0, 10),
            "flourish_index": (0, 10),
            "secure_flourish_index": (0, 10),
        },
    ),
    "perma": (
        "perma",
        23,
        0,
        10,
        {
            s: (0, 10)
            for s in (
                "positive_emotion",
                "engagement",
                "relationships",
                "meaning",
                "accomplishment",
                "negative_emotion",
                "health",
                "loneliness",
                "happiness",
                "overall",
            )
        },
    ),
}


@pytest.mark.parametrize("inst_id", sorted(FACTS))
def test_items_ranges_and_scale_ranges(inst_id: str) -> None:
    prefix, n, lo, hi, scales = FACTS[inst_id]
    spec = load_library()[inst_id]
    assert [it.id for it in spec.items] == [f"{prefix}_{i}" for i in range(1, n + 1)]
    assert all(spec.item_range(it.id) == (lo, hi) for it in spec.items)
    assert not any(it.reverse for it in spec.items)  # none of the five has reverse keying
    assert [s.id for s in spec.scales] == list(scales)
    for scale_id, bounds in scales.items():
        assert spec.scale_range(scale_id) == pytest.approx(bounds)


def test_who5_scoring_rules() -> None:
    spec = load_library()["who5"]
    raw, total = spec.scale("raw"), spec.scale("total")
    assert raw.rule == total.rule == "sum"
    assert raw.required_items == total.required_items == 5  # all five items (Topp 2015)
    assert (total.multiplier, total.offset) == (4, 0)
    # <= 28 likely depression, <= 50 poor wellbeing, > 50 otherwise
    assert [b.upper for b in total.bands] == [28, 50, 100]
    assert spec.minimal_important_difference == {"total": 10}
    assert spec.licence.commercial_use == "free"


def test_flourish12_domains_and_indices() -> None:
    spec = load_library()["flourish12"]
    domains = {
        "happiness_life_satisfaction": (1, 2),
        "mental_physical_health": (3, 4),
        "meaning_purpose": (5, 6),
        "character_virtue": (7, 8),
        "close_social_relationships": (9, 10),
        "financial_material_stability": (11, 12),
    }
    for scale_id, (a, b) in domains.items():
        s = spec.scale(scale_id)
        assert s.items == [f"flourish_{a}", f"flourish_{b}"]
        assert (s.rule, s.required_items) == ("mean", 2)
    fi, sfi = spec.scale("flourish_index"), spec.scale("secure_flourish_index")
    assert fi.items == [f"flourish_{i}" for i in range(1, 11)]
    assert sfi.items == [f"flourish_{i}" for i in range(1, 13)]
    assert (fi.rule, fi.required_items, sfi.rule, sfi.required_items) == ("mean", 10, "mean", 12)
    # Financial items anchored worry all of the time (0) ... never worry (10): not reversed.
    assert spec.item("flourish_11").response.anchors[10].lower().startswith("do not ever worry")
    lic = spec.licence
    assert lic.name.startswith("CC BY-NC 4.0")
    assert (lic.commercial_use, lic.requires_citation, lic.ships_items) == (
        "permission_required",
        True,
        False,
    )


def test_perma_item_map_follows_the_published_measure() -> None:
    # Butler & Kern (2016), Appendix A: item order A1 E1 P1 N1 A2 H1 M1 R1 M2 E2 Lon H2 P2 N2
    # A3 N3 E3 H3 R2 M3 R3 P3 hap.
    spec = load_library()["perma"]
    expected = {
        "positive_emotion": (3, 13, 22),
        "engagement": (2, 10, 17),
        "relationships": (8, 19, 21),
        "meaning": (7, 9, 20),
        "accomplishment": (1, 5, 15),
        "negative_emotion": (4, 14, 16),
        "health": (6, 12, 18),
        "loneliness": (11,),
        "happiness": (23,),
    }
    for scale_id, numbers in expected.items():
        s = spec.scale(scale_id)
        assert s.items == [f"perma_{i}" for i in numbers], scale_id
        assert s.rule == "mean"
    overall = spec.scale("overall")
    perma15 = [
        i
        for k in ("positive_emotion", "engagement", "relationships", "meaning", "accomplishment")
        for i in expected[k]
    ]
    assert sorted(overall.items, key=lambda x: int(x.split("_")[1])) == [
        f"perma_{i}" for i in sorted([*perma15, 23])
    ]
    assert len(overall.items) == 16
    # Every item belongs to exactly one domain (loneliness and happiness count as domains).
    domain_items = [i for k in expected for i in spec.scale(k).items]
    assert sorted(domain_items) == sorted(it.id for it in spec.items)
    assert spec.licence.commercial_use == "permission_required"


def test_swls_bands_match_the_interpretation_guide() -> None:
    spec = load_library()["swls"]
    s = spec.scale("total")
    assert (s.rule, s.required_items) == ("sum", 5)
    # 31-35 extremely satisfied; 26-30 satisfied; 21-25 slightly satisfied; 20 neutral;
    # 15-19 slightly dissatisfied; 10-14 dissatisfied; 5-9 extremely dissatisfied.
    assert [(b.label, b.upper) for b in s.bands] == [
        ("extremely_dissatisfied", 9),
        ("dissatisfied", 14),
        ("slightly_dissatisfied", 19),
        ("neutral", 20),
        ("slightly_satisfied", 25),
        ("satisfied", 30),
        ("extremely_satisfied", 35),
    ]
    assert spec.item("swls_3").text == "I am satisfied with my life."


def test_dfs_total() -> None:
    spec = load_library()["dfs"]
    s = spec.scale("total")
    assert (s.rule, s.required_items, s.items) == ("sum", 8, [f"dfs_{i}" for i in range(1, 9)])
    assert spec.licence.ships_items


def test_test_instrument_has_reverse_keying_and_an_item_override() -> None:
    spec = load_library([DATA])["revtest"]
    assert [it.id for it in spec.items if it.reverse] == ["revtest_2", "revtest_4"]
    assert spec.item_range("revtest_1") == (1, 5)
    assert spec.item_range("revtest_4") == (0, 4)
    assert spec.licence.commercial_use == "licence_required"
    # sum of items 1..4: minima 1+1+1+0, maxima 5+5+5+4
    assert spec.scale_range("total") == (3.0, 19.0)
    # 25 * mean - 25 over items on 1..5
    assert spec.scale_range("pair") == (0.0, 100.0)


# --- malformed files --------------------------------------------------------------------

MALFORMED_CASES = [
    ("missing_field.yaml", "citation", "Field required"),
    ("unknown_item.yaml", "scales.1.items", "unknownitem_9"),
    ("bad_range.yaml", "response.max", "must exceed min"),
    ("bad_item_range.yaml", "items.1.response.max", "must exceed min"),
    ("duplicate_items.yaml", "items.2.id", "dupitems_2' repeats"),
    ("duplicate_scales.yaml", "scales.1.id", "'total' repeats"),
    ("syntax_error.yaml", "<syntax>", "line 6"),
    ("bad_rule.yaml", "scales.0.rule", "'sum' or 'mean'"),
    ("bad_min_items.yaml", "scales.0.min_items", "1..2"),
    ("bands_short.yaml", "scales.0.bands", "maximum 8"),
    ("not_mapping.yaml", "<root>", "mapping"),
]


@pytest.mark.parametrize(("name", "field", "fragment"), MALFORMED_CASES)
def test_malformed_file_names_file_and_field(name: str, field: str, fragment: str) -> None:
    path = MALFORMED / name
    with pytest.raises(InstrumentDefinitionError) as info:
        load_instrument(path)
    err = info.value
    assert err.path == str(path)
    assert err.field == field
    assert fragment in str(err)
    assert str(path) in str(err) and f"'{field}'" in str(err)


def test_every_malformed_file_is_covered() -> None:
    assert sorted(p.name for p in MALFORMED.glob("*.yaml")) == sorted(c[0] for c in MALFORMED_CASES)


def test_toml_definition_loads(tmp_path: Path) -> None:
    path = tmp_path / "tomlinst.toml"
    path.write_text(
        'id = "tomlinst"\nname = "TOML instrument"\nversion = "1"\ncitation = "x"\n'
        '[licence]\nname = "Test"\n[response]\nmin = 0\nmax = 2\n'
        '[response.anchors]\n0 = "No"\n2 = "Yes"\n'
        '[[items]]\nid = "tomlinst_1"\ntext = "One"\n'
        '[[scales]]\nid = "total"\nname = "Total"\nitems = ["tomlinst_1"]\nrule = "sum"\n',
        encoding="utf-8",
    )
    spec = load_instrument(path)
    assert spec.response.anchors == {0: "No", 2: "Yes"}
    assert spec.scale_range("total") == (0.0, 2.0)


# --- study folders ----------------------------------------------------------------------


def test_study_folder_adds_instruments() -> None:
    lib = load_library([DATA])
    assert set(lib.ids()) == {"dfs", "flourish12", "perma", "swls", "who5", "prorate", "revtest"}
    assert lib.sources["revtest"] == str(DATA / "revtest.yaml")
    assert lib.instrument_of_item("revtest_4") == "revtest"
    row = next(r for r in lib.item_table() if r["item"] == "revtest_4")
    assert row == {
        "instrument": "revtest",
        "item": "revtest_4",
        "min": 0,
        "max": 4,
        "reverse": True,
    }


def test_study_folder_may_not_redefine_a_builtin_id() -> None:
    with pytest.raises(InstrumentDefinitionError) as info:
        load_library([DATA / "duplicate_id"])
    assert info.value.path == str(DATA / "duplicate_id" / "who5.yaml")
    assert info.value.field == "id"
    assert "already defined" in str(info.value)


def test_study_folder_may_not_reuse_a_builtin_item_id() -> None:
    with pytest.raises(InstrumentDefinitionError) as info:
        load_library([DATA / "item_clash"])
    assert info.value.path == str(DATA / "item_clash" / "clash.yaml")
    assert info.value.field == "items"
    assert "who5_1" in str(info.value)


def test_missing_study_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InstrumentDefinitionError) as info:
        load_library([tmp_path / "nope"])
    assert info.value.field == "<folder>"


# --- catalog text -----------------------------------------------------------------------


def test_instrument_list_shows_every_instrument_and_its_commercial_terms() -> None:
    lines = format_instrument_list(load_library()).splitlines()
    assert lines[0].split()[:2] == ["id", "name"]
    body = {line.split()[0]: line for line in lines[1:]}
    assert sorted(body) == ["dfs", "flourish12", "perma", "swls", "who5"]
    assert body["flourish12"].endswith("permission required")
    assert body["who5"].endswith("free")


def test_show_instrument_text() -> None:
    lib = load_library([DATA])
    text = format_instrument(lib["flourish12"])
    assert text.splitlines()[0] == (
        "flourish12: Flourish Measure (Secure Flourish, 12 items) (version 2017)"
    )
    assert "CC BY-NC 4.0" in text and "commercial use needs permission" in text
    assert "item wording not shipped" in text
    assert "0 = Worry all of the time; 10 = Do not ever worry" in text
    assert "flourish12.secure_flourish_index" in text
    assert "secure_flourish_index = mean(flourish_1..flourish_12); range 0-10" in text
    assert "scored only when all 12 items are answered" in text
    assert "VanderWeele TJ (2017)" in text

    swls = format_instrument(lib["swls"])
    assert "neutral (> 19 and <= 20)" in swls
    assert "1 = Strongly disagree" in swls and "7 = Strongly agree" in swls

    rev = format_instrument(lib["revtest"])
    assert "revtest_2  (paraphrase) Feeling bad [reverse keyed]" in rev
    assert "responses: 0-4 (0 = Not at all; 4 = Extremely)" in rev
    assert "pair = 25 x mean(revtest_1, revtest_2) - 25; range 0-100" in rev
    assert "scored when at least 3 of 4 items are answered" in rev
    assert "minimal important difference: 2" in rev
