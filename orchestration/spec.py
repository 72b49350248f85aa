"""The study spec: one ``study.toml`` describing a study's files, instruments and budget.

The spec is validated strictly on load (unknown keys are errors, types are not coerced)
so that a typo such as ``layuot = "wide"`` is reported instead of silently ignored.
Every path in the spec is relative to the spec file's folder (``StudySpec.base_dir``).
Keys are those of ``DESIGN.md`` (public) plus those pinned in ``docs/contracts.md``.
"""

from __future__ import annotations

import codecs
import fnmatch
import os
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

SurveyLayout = Literal["long", "wide", "qualtrics"]
FileFormat = Literal["csv", "parquet", "sav", "dta"]
#: Survey files may also be Excel workbooks (their first sheet).
SurveyFormat = Literal["csv", "parquet", "sav", "dta", "xlsx"]

#: Canonical column names a ``[survey.columns]`` rename may target besides item ids.
CANONICAL_COLUMNS: tuple[str, ...] = (
    "participant_id",
    "wave",
    "timestamp",
    "instrument",
    "item",
    "value",
)

DEFAULT_LEDGER_NAME = "privacy_ledger.sqlite"
DEFAULT_ANCHOR_NAME = "privacy_ledger.anchor.json"


class StudySpecError(ValueError):
    """The study spec is unusable; names the file and the dotted key (``survey.0.layout``).

    ``key`` is ``"<file>"`` when the file cannot be read and ``"<syntax>"`` for TOML
    syntax errors.
    """

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        super().__init__(f"{file}: key '{key}': {message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ParticipantsSpec(_Strict):
    """``[participants]``: one row per participant; columns renamed to the canonical names."""

    path: str
    format: FileFormat | None = None
    id_column: str = "participant_id"
    arm_column: str = "arm"
    cluster_column: str | None = None


class SurveySpec(_Strict):
    """One ``[[survey]]`` source: a file or glob in one layout.

    ``wave`` (a constant for every row of the file) and ``wave_column`` are mutually
    exclusive; with neither, the column ``wave`` is read. ``encoding`` (default utf-8, a
    BOM is skipped), ``delimiter`` (default: sniffed from the header among ``,`` ``;``
    tab) and ``timestamp_format`` (a strftime format; default ISO 8601) describe CSV
    files. ``columns`` renames source
    columns (after header whitespace is stripped) to a canonical name
    (:data:`CANONICAL_COLUMNS`) or an item id — this is how a Qualtrics export's
    ``Q3_1`` or ``ExternalReference`` is mapped.
    """

    path: str
    layout: SurveyLayout = "long"
    instruments: list[str] = Field(default_factory=list)
    format: SurveyFormat | None = None
    wave: int | None = Field(default=None, ge=0)
    wave_column: str | None = None
    columns: dict[str, str] = Field(default_factory=dict)
    encoding: str = "utf-8"
    delimiter: str | None = None
    timestamp_format: str | None = None

    @model_validator(mode="after")
    def _check(self) -> SurveySpec:
        if self.wave is not None and self.wave_column is not None:
            raise ValueError("give either 'wave' (a constant) or 'wave_column', not both")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ValueError(
                f"unknown encoding {self.encoding!r} (e.g. 'utf-8', 'latin-1', 'cp1252')"
            ) from None
        if self.delimiter is not None and (len(self.delimiter) != 1 or self.delimiter in '"\r\n'):
            raise ValueError(
                f"delimiter must be one character such as ',', ';' or '\\t', not {self.delimiter!r}"
            )
        if self.timestamp_format is not None and "%" not in self.timestamp_format:
            raise ValueError(
                f"timestamp_format is a strftime format such as '%m/%d/%Y %H:%M', "
                f"not {self.timestamp_format!r}"
            )
        targets = list(self.columns.values())
        dup = sorted({t for t in targets if targets.count(t) > 1})
        if dup:
            raise ValueError(f"several source columns are renamed to {dup}")
        return self


class InstrumentsSpec(_Strict):
    """``[instruments]``: folders of the study's own instrument definition files."""

    paths: list[str] = Field(default_factory=list)


class TelemetrySpec(_Strict):
    """``[telemetry]``: product events; engagement features per participant × wave window."""

    path: str
    format: FileFormat | None = None
    window_days: int = Field(default=28, gt=0)
    session_gap_minutes: float = Field(default=30.0, gt=0)


class AnalysisSpec(_Strict):
    """``[analysis]``: the pre-registered analysis plan."""

    plan: str


class PrivacySpec(_Strict):
    """``[privacy]``: total ε of the study's public releases and where the ledger lives.

    ``pseudonym_key_env`` and ``pseudonym_key_file`` are alternative sources of the
    master key for participant pseudonyms; ``ledger_key_env`` and ``ledger_key_file`` of
    the ledger's key. Each pair is mutually exclusive; a named source must exist (see
    :func:`privacy.keys.load_study_key`).
    """

    epsilon: float = Field(gt=0)
    ledger: str | None = None
    pseudonym_key_env: str | None = None
    pseudonym_key_file: str | None = None
    ledger_key_env: str | None = None
    ledger_key_file: str | None = None

    @model_validator(mode="after")
    def _check(self) -> PrivacySpec:
        if self.pseudonym_key_env is not None and self.pseudonym_key_file is not None:
            raise ValueError("give either 'pseudonym_key_env' or 'pseudonym_key_file', not both")
        if self.ledger_key_env is not None and self.ledger_key_file is not None:
            raise ValueError("give either 'ledger_key_env' or 'ledger_key_file', not both")
        return self


class StudySpec(_Strict):
    """A validated ``study.toml``.

    Use :func:`load_study_spec`; paths are kept as written and resolved against
    :attr:`base_dir` by :meth:`resolve`. ``study_id`` (default: ``name``) is what the
    study's keys are derived for (:attr:`study_key_id`).
    """

    name: str
    study_id: str | None = Field(default=None, min_length=1)
    output_dir: str = "out"
    participants: ParticipantsSpec
    survey: list[SurveySpec] = Field(min_length=1)
    instruments: InstrumentsSpec = Field(default_factory=InstrumentsSpec)
    telemetry: TelemetrySpec | None = None
    analysis: AnalysisSpec | None = None
    privacy: PrivacySpec | None = None

    _spec_path: Path = PrivateAttr(default_factory=lambda: Path("study.toml").absolute())

    @property
    def spec_path(self) -> Path:
        """Absolute path of the ``study.toml`` this spec was loaded from."""
        return self._spec_path

    @property
    def base_dir(self) -> Path:
        """Absolute folder of the spec file; every relative path is resolved against it."""
        return self._spec_path.parent

    def resolve(self, path: str | Path) -> Path:
        """Absolute path of ``path`` (relative to :attr:`base_dir` unless absolute)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @property
    def output_path(self) -> Path:
        """Absolute output folder (``output_dir``)."""
        return self.resolve(self.output_dir)

    @property
    def ledger_path(self) -> Path:
        """Absolute path of the study's privacy-budget ledger.

        ``[privacy] ledger`` or ``privacy_ledger.sqlite`` beside study.toml — never inside
        ``output_dir``, so deleting outputs keeps the budget.
        """
        if self.privacy is not None and self.privacy.ledger is not None:
            return self.resolve(self.privacy.ledger)
        return self.base_dir / DEFAULT_LEDGER_NAME

    @property
    def ledger_anchor_path(self) -> Path:
        """Absolute path of the ledger's anchor file: ``privacy_ledger.anchor.json``.

        Always beside study.toml, whatever ``[privacy] ledger`` says, so a ledger that is
        deleted, replaced or pointed elsewhere is detected against the head recorded here.
        """
        return self.base_dir / DEFAULT_ANCHOR_NAME

    @property
    def study_key_id(self) -> str:
        """The id keys are derived for (``study_id``, else ``name``).

        Set ``study_id`` to keep pseudonyms and the ledger key stable across a rename.
        """
        return self.study_id if self.study_id is not None else self.name

    @property
    def instrument_dirs(self) -> list[Path]:
        """Absolute folders of the study's own instruments (``[instruments] paths``)."""
        return [self.resolve(p) for p in self.instruments.paths]

    @property
    def instrument_ids(self) -> list[str]:
        """Instrument ids named by the surveys, in first-mention order, without repeats."""
        return list(dict.fromkeys(i for s in self.survey for i in s.instruments))


_GLOB_CHARS = re.compile(r"[*?\[]")


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both already resolved)."""
    return path == folder or folder in path.parents


def _glob_may_match_inside(pattern: Path, folder: Path) -> bool:
    """Whether a glob (absolute, its parts ``*``/``?``/``[..]``/``**``) can match below ``folder``.

    Compared part by part against the resolved folder: the glob can reach into the folder
    when its parts match the folder's leading parts (``**`` matches any number of parts)
    and it continues below them.
    """
    pat = pattern.parts
    tgt = folder.parts

    def walk(i: int, j: int) -> bool:
        if j == len(tgt):
            return i < len(pat)  # the folder itself matched; the glob goes on below it
        if i == len(pat):
            return False
        if pat[i] == "**":
            return walk(i + 1, j) or walk(i, j + 1)
        return fnmatch.fnmatchcase(tgt[j], pat[i]) and walk(i + 1, j + 1)

    return walk(0, 0)


def _glob_base(pattern: Path) -> Path:
    """The leading parts of a glob without wildcard characters."""
    parts = []
    for part in pattern.parts:
        if _GLOB_CHARS.search(part):
            break
        parts.append(part)
    return Path(*parts)


def _resolved_glob(spec: StudySpec, pattern: str) -> Path:
    """A glob resolved against the study folder, its literal base resolved through links."""
    target = spec.resolve(pattern)
    base = _glob_base(target)
    return Path(os.path.realpath(base), *target.parts[len(base.parts):])


def check_output_dir(spec: StudySpec) -> None:
    """Refuse an ``output_dir`` that holds the study's inputs or writes through a symlink.

    ``output_dir`` (resolved, links followed) must not be, nor contain, the spec file, the
    ledger and its anchor, the key files, the participants, survey or telemetry files (or a
    folder their globs can reach into), the analysis plan or the study's instrument
    folders: outputs would overwrite them, or the ledger would be deleted with the outputs.
    Nothing inside ``output_dir`` may be a symlink that leads out of it, so no output is
    ever written through one (``output_dir`` itself may be a link, e.g. to a larger disk).

    Raises
    ------
    StudySpecError
        Key ``output_dir``, naming the input or the link.
    """
    out = Path(os.path.realpath(spec.output_path))

    def fail(message: str) -> None:
        raise StudySpecError(spec.spec_path, "output_dir", message)

    files: list[tuple[str, Path]] = [
        ("the study spec", spec.spec_path),
        ("the privacy ledger", spec.ledger_path),
        ("the ledger anchor", spec.ledger_anchor_path),
    ]
    if spec.privacy is not None:
        for key in ("pseudonym_key_file", "ledger_key_file"):
            value = getattr(spec.privacy, key)
            if value is not None:
                files.append((f"the key file ([privacy] {key})", spec.resolve(value)))
    if spec.analysis is not None:
        files.append(("the analysis plan", spec.resolve(spec.analysis.plan)))
    files += [(f"an instrument folder ({d})", d) for d in spec.instrument_dirs]
    globs: list[tuple[str, str]] = [("the participants file", spec.participants.path)]
    globs += [(f"survey {i} ({s.path})", s.path) for i, s in enumerate(spec.survey)]
    if spec.telemetry is not None:
        globs.append(("the telemetry files", spec.telemetry.path))
    for what, path in files:
        if _inside(Path(os.path.realpath(path)), out):
            fail(f"'{spec.output_dir}' ({out}) contains {what}; outputs would overwrite it "
                 "or be deleted with it — choose a folder of its own, e.g. 'out'")
    for what, pattern in globs:
        resolved = _resolved_glob(spec, pattern)
        literal = not _GLOB_CHARS.search(pattern)
        if (literal and _inside(resolved, out)) or (
                not literal and (_inside(_glob_base(resolved), out)
                                 or _glob_may_match_inside(resolved, out))):
            fail(f"'{spec.output_dir}' ({out}) contains {what}; outputs would overwrite it "
                 "or be read back as input — choose a folder of its own, e.g. 'out'")
    if out.is_dir():
        for root, dirs, names in os.walk(out):
            for name in dirs + names:
                entry = Path(root) / name
                if entry.is_symlink() and not _inside(Path(os.path.realpath(entry)), out):
                    fail(f"{entry} is a symlink to {os.path.realpath(entry)}, outside "
                         "output_dir; outputs are never written through a link out of "
                         "output_dir — remove the link")


def _dotted(loc: tuple[int | str, ...]) -> str:
    # pydantic adds the model/union tag to a loc for tagged unions; none here, keep all parts.
    return ".".join(str(p) for p in loc) or "<root>"


def load_study_spec(path: Path | str) -> StudySpec:
    """Load and validate a ``study.toml``.

    Parameters
    ----------
    path
        The spec file; relative paths inside it are resolved against its folder.

    Returns
    -------
    StudySpec
        The validated spec, remembering its own absolute location.

    Raises
    ------
    StudySpecError
        When the file is missing or unreadable (key ``<file>``), is not valid TOML
        (key ``<syntax>``), or a key is unknown, missing or of the wrong type (the dotted
        key, e.g. ``survey.0.layout``; the message says how many other keys are wrong),
        or ``output_dir`` holds an input or a link out of it (:func:`check_output_dir`).
    """
    path = Path(path).expanduser().absolute()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StudySpecError(path, "<file>", "study spec not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StudySpecError(path, "<file>", f"cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StudySpecError(path, "<syntax>", str(exc)) from None
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        if len(errors) > 1:
            others = ", ".join(_dotted(e["loc"]) for e in errors[1:])
            msg += f" (and {len(errors) - 1} more: {others})"
        raise StudySpecError(path, _dotted(first["loc"]), msg) from None
    spec._spec_path = path
    check_output_dir(spec)
    return spec
