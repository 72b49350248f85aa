from pathlib import Path

import pytest

from orchestration.spec import StudySpec, StudySpecError, load_study_spec

MINIMAL = """
name = "Example trial"
output_dir = "out"

[participants]
path = "participants.csv"

[[survey]]
path = "survey/*.csv"
layout = "long"
instruments = ["who5"]
"""

FULL = """
name = "Full"
output_dir = "results/run1"

[instruments]
paths = ["my_instruments"]

[participants]
path = "people.parquet"
format = "parquet"
id_column = "person"
arm_column = "group"
cluster_column = "site"

[[survey]]
path = "baseline.csv"
layout = "qualtrics"
instruments = ["who5"]
wave = 0
[survey.columns]
ExternalReference = "participant_id"
RecordedDate = "timestamp"
Q1_1 = "who5_1"

[[survey]]
path = "followup/*.sav"
layout = "wide"
wave_column = "visit"

[telemetry]
path = "telemetry/*.parquet"
window_days = 14
session_gap_minutes = 20

[analysis]
plan = "analysis_plan.yaml"

[privacy]
epsilon = 3.0
ledger = "budget/ledger.sqlite"
pseudonym_key_env = "MY_KEY"
"""


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_minimal_spec_defaults_and_paths(tmp_path):
    spec = load_study_spec(write(tmp_path, MINIMAL))
    assert isinstance(spec, StudySpec)
    assert spec.base_dir == tmp_path.absolute()
    assert spec.output_path == tmp_path.absolute() / "out"
    assert spec.output_path.is_absolute()
    # DESIGN.md: the ledger lives beside study.toml unless the spec names another path
    assert spec.ledger_path == tmp_path.absolute() / "privacy_ledger.sqlite"
    assert spec.instrument_dirs == []
    assert spec.survey[0].layout == "long"
    assert spec.survey[0].wave is None and spec.survey[0].wave_column is None
    assert spec.resolve("a/b.csv") == tmp_path.absolute() / "a" / "b.csv"
    assert spec.resolve("/abs/x.csv") == Path("/abs/x.csv")
    assert spec.participants.id_column == "participant_id"
    assert spec.telemetry is None and spec.privacy is None


def test_full_spec(tmp_path):
    spec = load_study_spec(write(tmp_path, FULL))
    assert spec.instrument_dirs == [tmp_path.absolute() / "my_instruments"]
    assert spec.participants.cluster_column == "site"
    q, w = spec.survey
    assert q.wave == 0 and q.columns["Q1_1"] == "who5_1" and q.layout == "qualtrics"
    assert w.wave_column == "visit"
    assert spec.telemetry.window_days == 14 and spec.telemetry.session_gap_minutes == 20
    assert spec.ledger_path == tmp_path.absolute() / "budget" / "ledger.sqlite"
    assert spec.privacy.pseudonym_key_env == "MY_KEY"
    assert spec.output_path == tmp_path.absolute() / "results" / "run1"
    assert spec.instrument_ids == ["who5"]


def test_relative_spec_path_is_made_absolute(tmp_path, monkeypatch):
    write(tmp_path, MINIMAL)
    monkeypatch.chdir(tmp_path)
    spec = load_study_spec("study.toml")
    assert spec.spec_path == tmp_path.absolute() / "study.toml"
    assert spec.output_path.is_absolute()


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (MINIMAL.replace('layout = "long"', 'layuot = "long"'), "survey.0.layuot", "unknown key"),
        (MINIMAL.replace('layout = "long"', 'layout = "tall"'), "survey.0.layout", "long"),
        ("surprise = 1\n" + MINIMAL, "surprise", "unknown key"),
        (MINIMAL + "\nsurprise = 1\n", "survey.0.surprise", "unknown key"),
        (MINIMAL.replace('path = "participants.csv"', 'file = "p.csv"'), "participants.path", ""),
        (MINIMAL.replace('name = "Example trial"', "name = 3"), "name", "string"),
        (MINIMAL + "\n[privacy]\nepsilon = -1.0\n", "privacy.epsilon", "greater than 0"),
        (MINIMAL + '\n[privacy]\nepsilon = "3"\n', "privacy.epsilon", "number"),
        (
            MINIMAL.replace('layout = "long"', 'layout = "long"\nwave = 1\nwave_column = "w"'),
            "survey.0",
            "not both",
        ),
        (MINIMAL.replace('layout = "long"', 'layout = "long"\nwave = -1'), "survey.0.wave", ""),
        (
            MINIMAL + '\n[privacy]\nepsilon = 1.0\npseudonym_key_env = "A"\n'
            'pseudonym_key_file = "k"\n',
            "privacy",
            "not both",
        ),
        (
            MINIMAL + '\n[privacy]\nepsilon = 1.0\nledger_key_env = "A"\n'
            'ledger_key_file = "k"\n',
            "privacy",
            "not both",
        ),
        ('study_id = ""\n' + MINIMAL, "study_id", "at least 1"),
        (
            MINIMAL + '\n[telemetry]\npath = "t.parquet"\nwindow_days = 0\n',
            "telemetry.window_days",
            "",
        ),
        (MINIMAL + '\n[instruments]\npaths = "x"\n', "instruments.paths", "list"),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, key, fragment):
    path = write(tmp_path, text)
    with pytest.raises(StudySpecError) as err:
        load_study_spec(path)
    assert err.value.key == key
    assert err.value.file == str(path.absolute())
    assert fragment in err.value.message
    assert str(path.absolute()) in str(err.value) and f"'{key}'" in str(err.value)


def test_survey_list_must_not_be_empty(tmp_path):
    text = 'name = "x"\nsurvey = []\n[participants]\npath = "p.csv"\n'
    with pytest.raises(StudySpecError) as err:
        load_study_spec(write(tmp_path, text))
    assert err.value.key == "survey"


def test_missing_file(tmp_path):
    with pytest.raises(StudySpecError) as err:
        load_study_spec(tmp_path / "nope.toml")
    assert err.value.key == "<file>" and "nope.toml" in err.value.file


def test_toml_syntax_error(tmp_path):
    path = write(tmp_path, 'name = "x\n[participants]\n')
    with pytest.raises(StudySpecError) as err:
        load_study_spec(path)
    assert err.value.key == "<syntax>" and err.value.file == str(path.absolute())


def test_several_errors_are_counted(tmp_path):
    text = MINIMAL.replace('layout = "long"', 'layout = "tall"\ncolour = 1')
    with pytest.raises(StudySpecError) as err:
        load_study_spec(write(tmp_path, text))
    assert "1 more" in err.value.message


def test_spec_is_frozen(tmp_path):
    spec = load_study_spec(write(tmp_path, MINIMAL))
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        spec.name = "other"


def test_keys_anchor_and_study_id(tmp_path):
    spec = load_study_spec(write(tmp_path, MINIMAL))
    assert spec.study_key_id == "Example trial"  # defaults to the name
    assert spec.ledger_anchor_path == tmp_path.absolute() / "privacy_ledger.anchor.json"
    text = 'study_id = "trial-2024-07"\n' + MINIMAL + (
        '\n[privacy]\nepsilon = 2.0\nledger = "elsewhere/l.sqlite"\n'
        'ledger_key_file = "secrets/ledger.key"\n'
    )
    spec = load_study_spec(write(tmp_path, text))
    assert spec.study_key_id == "trial-2024-07"
    assert spec.privacy.ledger_key_file == "secrets/ledger.key"
    assert spec.privacy.ledger_key_env is None
    # the anchor stays beside study.toml when the ledger is moved, so the move is detected
    assert spec.ledger_path == tmp_path.absolute() / "elsewhere" / "l.sqlite"
    assert spec.ledger_anchor_path == tmp_path.absolute() / "privacy_ledger.anchor.json"


# ------------------------------------------------------------------ output_dir safety


def _spec_with(tmp_path: Path, output_dir: str, extra: str = "") -> Path:
    path = tmp_path / "study" / "study.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(MINIMAL.replace('output_dir = "out"', f"output_dir = {output_dir!r}")
                    .replace("'", '"') + extra)
    return path


@pytest.mark.parametrize("output_dir", [".", "..", "../..", "./", "survey"])
def test_output_dir_holding_the_study_or_its_inputs_is_refused(tmp_path: Path,
                                                                output_dir: str) -> None:
    path = _spec_with(tmp_path, output_dir)
    with pytest.raises(StudySpecError) as err:
        load_study_spec(path)
    assert err.value.key == "output_dir"


def test_output_dir_holding_the_ledger_key_or_participants_is_refused(tmp_path: Path) -> None:
    for extra, what in (
        ('\n[privacy]\nepsilon = 1.0\nledger = "out/ledger.sqlite"\n', "ledger"),
        ('\n[privacy]\nepsilon = 1.0\npseudonym_key_file = "out/p.key"\n', "key file"),
        ('\n[analysis]\nplan = "out/plan.yaml"\n', "analysis plan"),
    ):
        with pytest.raises(StudySpecError, match=what) as err:
            load_study_spec(_spec_with(tmp_path, "out", extra))
        assert err.value.key == "output_dir"
    path = _spec_with(tmp_path, "out")
    path.write_text(path.read_text().replace('path = "participants.csv"',
                                             'path = "out/participants.csv"'))
    with pytest.raises(StudySpecError, match="participants") as err:
        load_study_spec(path)
    assert err.value.key == "output_dir"


def test_a_survey_glob_reaching_into_output_dir_is_refused(tmp_path: Path) -> None:
    for pattern in ("**/*.csv", "*/*.csv"):
        path = _spec_with(tmp_path, "out")
        path.write_text(path.read_text().replace('"survey/*.csv"', f'"{pattern}"'))
        with pytest.raises(StudySpecError, match="survey 0") as err:
            load_study_spec(path)
        assert err.value.key == "output_dir"
    for pattern in ("*.csv", "survey/**/*.csv", "surveys*/*.csv"):
        path.write_text(MINIMAL.replace('"survey/*.csv"', f'"{pattern}"'))
        assert load_study_spec(path).output_dir == "out"


def test_output_dir_that_is_a_link_to_the_study_folder_is_refused(tmp_path: Path) -> None:
    path = _spec_with(tmp_path, "out")
    (path.parent / "out").symlink_to(path.parent, target_is_directory=True)
    with pytest.raises(StudySpecError) as err:
        load_study_spec(path)
    assert err.value.key == "output_dir"


def test_an_output_linked_out_of_output_dir_is_refused(tmp_path: Path) -> None:
    path = _spec_with(tmp_path, "out")
    out = path.parent / "out"
    out.mkdir()
    victim = tmp_path / "user_file.txt"
    victim.write_text("mine")
    (out / "quarantine.csv").symlink_to(victim)
    with pytest.raises(StudySpecError, match="symlink") as err:
        load_study_spec(path)
    assert err.value.key == "output_dir"
    (out / "quarantine.csv").unlink()
    (tmp_path / "site").mkdir()
    (out / "report").symlink_to(tmp_path / "site", target_is_directory=True)
    with pytest.raises(StudySpecError, match="report"):
        load_study_spec(path)
    (out / "report").unlink()
    # a link that stays inside output_dir, and output_dir itself as a link, are fine
    (out / "alias.parquet").symlink_to(out / "responses.parquet")
    assert load_study_spec(path).output_dir == "out"
    (tmp_path / "disk").mkdir()
    link = _spec_with(tmp_path, "elsewhere")
    (link.parent / "elsewhere").symlink_to(tmp_path / "disk", target_is_directory=True)
    assert load_study_spec(link).output_dir == "elsewhere"
    assert victim.read_text() == "mine"


def test_survey_csv_options_are_read(tmp_path):
    text = MINIMAL + 'encoding = "latin-1"\ndelimiter = ";"\ntimestamp_format = "%m/%d/%Y"\n'
    s = load_study_spec(write(tmp_path, text)).survey[0]
    assert (s.encoding, s.delimiter, s.timestamp_format) == ("latin-1", ";", "%m/%d/%Y")
    s = load_study_spec(write(tmp_path, MINIMAL)).survey[0]
    assert (s.encoding, s.delimiter, s.timestamp_format) == ("utf-8", None, None)


@pytest.mark.parametrize(
    ("line", "what"),
    [
        ('encoding = "utf-9"', "unknown encoding"),
        ('delimiter = ";;"', "one character"),
        ('timestamp_format = "MM/DD/YYYY"', "strftime"),
    ],
)
def test_bad_survey_csv_options_name_the_key(tmp_path, line, what):
    with pytest.raises(StudySpecError, match=what) as err:
        load_study_spec(write(tmp_path, MINIMAL + line + "\n"))
    assert "survey.0" in str(err.value)
