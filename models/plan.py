"""Pre-registered statistical analysis plans: parse, validate, seal and verify.

An analysis plan (``analysis_plan.yaml``) is written before outcome data are seen. It holds
the minimal keys of DESIGN.md (title, arms, multiplicity, hypotheses) and what a statistical
analysis plan (SAP) needs beyond them: ICH E9(R1) estimands per hypothesis, the
missing-data strategy, covariates, the robust standard-error type, the planned allocation
and sample size, minimum important differences and group-sequential interim looks.

Sealing (:func:`lock_plan`) stores the sha256 of a *canonical form* of the plan (the parsed
YAML re-serialised as JSON with sorted keys, so key order, whitespace, comments and
quoting do not matter) beside the plan as ``<plan stem>.lock.json``. :func:`verify_plan`
recomputes it and returns a unified diff of the canonical forms when the plan changed.

References
----------
ICH E9(R1) addendum on estimands and sensitivity analysis in clinical trials (2019).
Gamble C. et al. (2017) Guidelines for the content of statistical analysis plans in
clinical trials. JAMA 318(23):2337-2343.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Role = Literal["primary", "secondary", "guardrail"]
Method = Literal["ancova", "mmrm", "bayes_growth"]
Multiplicity = Literal["holm", "hochberg", "bh", "none"]
Sided = Literal["two", "one"]
Direction = Literal["higher_is_better", "lower_is_better"]
RobustSE = Literal["HC1", "HC3"]
MissingDataStrategy = Literal["complete_case", "baseline_mean_imputation"]
IntercurrentStrategy = Literal[
    "treatment_policy", "hypothetical", "composite", "while_on_treatment", "principal_stratum"
]
Spending = Literal["obrien_fleming", "pocock"]
PlanStatus = Literal["locked", "deviated", "unregistered"]
VerificationStatus = Literal["intact", "deviated", "unlocked"]

LOCK_FORMAT_VERSION = 1


class PlanError(ValueError):
    """The plan (or its lock) is malformed; the message names the file and the key."""

    def __init__(self, path: Path | str, key: str, message: str) -> None:
        self.path = str(path)
        self.key = key
        super().__init__(f"{path}: key '{key}': {message}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntercurrentEventSpec(_Strict):
    """An intercurrent event and the ICH E9(R1) strategy that handles it."""

    event: str = Field(min_length=1)
    strategy: IntercurrentStrategy


class EstimandSpec(_Strict):
    """The five ICH E9(R1) attributes; treatment and variable default from the hypothesis."""

    population: str = "all randomised participants"
    summary: str = "difference in means (treatment - control)"
    intercurrent_events: list[IntercurrentEventSpec] = Field(default_factory=list)
    description: str = ""


class MissingDataSpec(_Strict):
    """Primary missing-data strategy and free-text sensitivity analyses.

    ``complete_case`` drops participants without outcome or baseline (valid under MAR given
    arm and baseline for ANCOVA); ``baseline_mean_imputation`` fills a missing baseline with
    the pooled baseline mean, which is unbiased in randomised trials because baseline is
    independent of arm (White & Thompson 2005, Stat Med 24:993-1007).
    """

    strategy: MissingDataStrategy = "complete_case"
    sensitivity: list[str] = Field(default_factory=list)


class InterimSpec(_Strict):
    """Group-sequential interim looks (Lan-DeMets alpha spending), final look last (1.0)."""

    information_fractions: list[float] = Field(min_length=1)
    spending: Spending = "obrien_fleming"

    @model_validator(mode="after")
    def _check(self) -> InterimSpec:
        t = self.information_fractions
        if any(not 0.0 < x <= 1.0 for x in t):
            raise ValueError("information fractions must lie in (0, 1]")
        if any(b <= a for a, b in zip(t, t[1:], strict=False)):
            raise ValueError("information fractions must be strictly increasing")
        if abs(t[-1] - 1.0) > 1e-12:
            raise ValueError("the last look must be at information fraction 1.0")
        return self


class PublicSpec(_Strict):
    """``public:`` what the public report may show, declared and sealed with the plan.

    Nothing public is taken from the data: group keys are the plan's arms and the declared
    waves; outcomes, ε and usefulness are declared here (or defaulted from the plan) and
    sealed with it, and their accuracy is planned before any data are read.

    Attributes
    ----------
    outcomes
        Outcomes with an effect figure (difference in mean change from baseline, at the
        hypothesis's wave or the last declared wave). Default: the outcomes of the
        primary and secondary hypotheses.
    trajectories
        Outcomes with a means figure (mean per arm x declared wave). Default: the primary
        outcome.
    waves
        Public waves, baseline first. Default: the plan's ``waves`` schedule, else the
        baseline 0 and the hypotheses' waves.
    breakdowns
        Group keys: ``arm`` and ``wave`` (the declared arms and waves), plus any covariate
        of the participants table whose categories are declared in ``categories``; each
        such covariate adds the primary effect broken down by its categories.
    categories
        Declared categories per covariate breakdown: a list (equal expected shares) or a
        mapping category -> expected share. They are the only keys: a participant in any
        other category is left out of that figure and counted.
    epsilon
        ε of one release suite. Default: the study's whole ``[privacy] epsilon``.
    split
        ``auto`` (each figure gets ε in proportion to what it needs to be useful, the
        primary figures first) or a mapping figure id -> weight.
    usefulness
        Usefulness thresholds in outcome units, by figure id or outcome: a figure whose
        expected 95 % noise margin is wider is withheld. Default: the hypothesis's minimal
        important difference (MID) for an effect, half of it for the primary effect and
        for means (two means one MID apart must be told apart), else the instrument's
        MID, else a tenth of the range.
    expected_n
        Expected randomised participants (all arms). Default: ``planned_sample_size``.
    expected_retention
        Expected share still answering at the last wave (planning only).
    change_bound
        Changes from baseline are clipped to +/- this share of the range.
    alpha
        1 - confidence of every published margin and interval.
    """

    outcomes: list[str] | None = None
    trajectories: list[str] | None = None
    waves: list[int] | None = None
    breakdowns: list[str] = Field(default_factory=lambda: ["arm", "wave"])
    categories: dict[str, list[str] | dict[str, float]] = Field(default_factory=dict)
    epsilon: float | None = Field(default=None, gt=0.0)
    split: Literal["auto"] | dict[str, float] = "auto"
    usefulness: dict[str, float] = Field(default_factory=dict)
    expected_n: int | None = Field(default=None, gt=0)
    expected_retention: float = Field(default=0.75, gt=0.0, le=1.0)
    change_bound: float = Field(default=0.5, gt=0.0, le=1.0)
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)

    @model_validator(mode="after")
    def _check(self) -> PublicSpec:
        pattern = r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$"

        for key in ("outcomes", "trajectories"):
            for o in getattr(self, key) or []:
                if not re.match(pattern, o):
                    raise ValueError(f"{key}: '{o}' is not an instrument.scale id")
        if len(set(self.breakdowns)) != len(self.breakdowns) or not {"arm", "wave"} <= set(
                self.breakdowns):
            raise ValueError("breakdowns must list arm and wave once each, then covariates")
        for b in self.breakdowns:
            if b in ("arm", "wave"):
                continue
            cats = self.categories.get(b)
            if not cats:
                raise ValueError(f"breakdown '{b}' needs its categories declared in "
                                 f"categories.{b} (keys never come from the data)")
            names = list(cats)
            if len(set(names)) != len(names) or any(not str(c) for c in names):
                raise ValueError(f"categories.{b} must be distinct, non-empty")
            if isinstance(cats, dict) and any(v <= 0 for v in cats.values()):
                raise ValueError(f"categories.{b}: expected shares must be positive")
        extra = set(self.categories) - set(self.breakdowns)
        if extra:
            raise ValueError(f"categories declared for {sorted(extra)}, which breakdowns omit")
        if self.waves is not None and (len(set(self.waves)) != len(self.waves)
                                       or any(w < 0 for w in self.waves)):
            raise ValueError("waves must be distinct non-negative integers")
        if any(v <= 0 for v in self.usefulness.values()):
            raise ValueError("usefulness thresholds must be positive")
        if isinstance(self.split, dict) and any(v < 0 for v in self.split.values()):
            raise ValueError("split weights must be non-negative")
        return self


class HypothesisSpec(_Strict):
    """One pre-registered hypothesis: an outcome, a method and its error rate."""

    id: str = Field(min_length=1)
    role: Role
    family: str | None = None
    outcome: str = Field(pattern=r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
    method: Method
    wave: int | None = Field(default=None, ge=1)
    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    sided: Sided = "two"
    minimum_important_difference: float | None = Field(default=None, gt=0.0)
    direction: Direction = "higher_is_better"
    covariates: list[str] | None = None
    estimand: EstimandSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> HypothesisSpec:
        if self.method == "ancova" and self.wave is None:
            raise ValueError("method 'ancova' needs 'wave' (the follow-up wave analysed)")
        return self

    @property
    def instrument(self) -> str:
        """Instrument id of the outcome (``who5`` of ``who5.total``)."""
        return self.outcome.split(".", 1)[0]

    @property
    def scale(self) -> str:
        """Bare scale id of the outcome (``total`` of ``who5.total``)."""
        return self.outcome.split(".", 1)[1]

    @property
    def family_name(self) -> str:
        """Multiplicity family; defaults to the role."""
        return self.family if self.family is not None else self.role


class AnalysisPlan(_Strict):
    """A validated statistical analysis plan (the parsed ``analysis_plan.yaml``)."""

    title: str = Field(min_length=1)
    control_arm: str = Field(min_length=1)
    treatment_arm: str = Field(min_length=1)
    multiplicity: Multiplicity = "holm"
    allocation: dict[str, float] | None = None
    planned_sample_size: int | None = Field(default=None, gt=0)
    covariates: list[str] = Field(default_factory=list)
    cluster: str | None = None
    robust_se: RobustSE = "HC1"
    missing_data: MissingDataSpec = Field(default_factory=MissingDataSpec)
    interim: InterimSpec | None = None
    subgroups: list[str] = Field(default_factory=list)
    waves: list[int] | None = None
    hypotheses: list[HypothesisSpec] = Field(min_length=1)
    public: PublicSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> AnalysisPlan:
        if self.control_arm == self.treatment_arm:
            raise ValueError("control_arm and treatment_arm must differ")
        ids = [h.id for h in self.hypotheses]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"hypothesis ids repeat: {dup}")
        if self.allocation is not None:
            for arm in (self.control_arm, self.treatment_arm):
                if arm not in self.allocation:
                    raise ValueError(f"allocation lacks arm '{arm}'")
            if any(v <= 0 for v in self.allocation.values()):
                raise ValueError("allocation shares must be positive")
        if self.waves is not None:
            if len(set(self.waves)) != len(self.waves) or any(w < 0 for w in self.waves):
                raise ValueError("waves must be distinct non-negative integers")
            for h in self.hypotheses:
                if h.wave is not None and h.wave not in self.waves:
                    raise ValueError(f"hypothesis {h.id}: wave {h.wave} is not in the plan's waves")
        return self

    @property
    def wave_schedule(self) -> list[int]:
        """Declared waves: ``waves``, else baseline 0 and every hypothesis's wave."""
        if self.waves is not None:
            return sorted(self.waves)
        return sorted({0, *(h.wave for h in self.hypotheses if h.wave is not None)})

    @property
    def allocation_shares(self) -> dict[str, float] | None:
        """Allocation normalised to shares summing to 1 (ratios such as 1:1 are accepted)."""
        if self.allocation is None:
            return None
        total = sum(self.allocation.values())
        return {k: v / total for k, v in self.allocation.items()}

    def hypothesis(self, hypothesis_id: str) -> HypothesisSpec:
        """Return the hypothesis with this id (KeyError if absent)."""
        for h in self.hypotheses:
            if h.id == hypothesis_id:
                return h
        raise KeyError(hypothesis_id)


@dataclass(frozen=True)
class PlanLock:
    """The seal of a plan: its canonical sha256, when, and how many outcome rows existed."""

    plan_path: str
    lock_path: str
    sha256: str
    locked_at: str
    outcome_rows: int | None
    canonical: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form written to ``<plan stem>.lock.json``."""
        return {
            "format_version": LOCK_FORMAT_VERSION,
            "plan": Path(self.plan_path).name,
            "sha256": self.sha256,
            "locked_at": self.locked_at,
            "outcome_rows": self.outcome_rows,
            "canonical": self.canonical,
        }


@dataclass(frozen=True)
class PlanVerification:
    """Outcome of :func:`verify_plan`.

    ``status`` is ``intact`` (sha matches the lock), ``deviated`` (the plan changed after
    sealing; ``diff`` is a unified diff locked -> current of the canonical forms) or
    ``unlocked`` (no lock file).
    """

    status: VerificationStatus
    sha256: str
    locked_sha256: str | None
    diff: str
    locked_at: str | None = None
    outcome_rows: int | None = None

    @property
    def plan_status(self) -> PlanStatus:
        """The ``plan_status`` every effect row carries."""
        return {"intact": "locked", "deviated": "deviated", "unlocked": "unregistered"}[
            self.status
        ]


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<plan>"


def read_plan_mapping(path: Path | str) -> dict[str, Any]:
    """Read the raw YAML mapping of a plan file.

    Raises
    ------
    PlanError
        When the file is missing, is not YAML, or is not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanError(path, "<file>", f"cannot read: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PlanError(path, "<file>", f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise PlanError(path, "<file>", "the plan must be a YAML mapping")
    return data


def parse_analysis_plan(
    data: Mapping[str, Any],
    *,
    source: str = "<plan>",
    known_outcomes: Iterable[str] | None = None,
    known_arms: Iterable[str] | None = None,
) -> AnalysisPlan:
    """Validate a plan mapping.

    Parameters
    ----------
    data
        The parsed YAML mapping.
    source
        File name used in error messages.
    known_outcomes
        Dotted ``instrument.scale`` ids that exist (from the instrument library); an outcome
        outside this set is an error. ``None`` skips the check.
    known_arms
        Arms present in the study's participants; arms named in the plan must be among them.
        ``None`` skips the check.

    Raises
    ------
    PlanError
        Naming the first offending key (``hypotheses[1].alpha``).
    """
    try:
        plan = AnalysisPlan.model_validate(dict(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _format_loc(tuple(err["loc"]))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        raise PlanError(source, key, msg) from None
    if known_outcomes is not None:
        outcomes = set(known_outcomes)
        for i, h in enumerate(plan.hypotheses):
            if h.outcome not in outcomes:
                raise PlanError(
                    source, f"hypotheses[{i}].outcome", f"unknown outcome '{h.outcome}'"
                )
        if plan.public is not None:
            for key in ("outcomes", "trajectories"):
                for i, o in enumerate(getattr(plan.public, key) or []):
                    if o not in outcomes:
                        raise PlanError(source, f"public.{key}[{i}]", f"unknown outcome '{o}'")
    if known_arms is not None:
        arms = set(known_arms)
        for key in ("control_arm", "treatment_arm"):
            arm = getattr(plan, key)
            if arm not in arms:
                raise PlanError(source, key, f"unknown arm '{arm}' (known: {sorted(arms)})")
        for arm in plan.allocation or {}:
            if arm not in arms:
                raise PlanError(source, f"allocation.{arm}", f"unknown arm '{arm}'")
    return plan


def load_analysis_plan(
    path: Path | str,
    *,
    known_outcomes: Iterable[str] | None = None,
    known_arms: Iterable[str] | None = None,
) -> AnalysisPlan:
    """Load and validate ``analysis_plan.yaml``; see :func:`parse_analysis_plan`."""
    return parse_analysis_plan(
        read_plan_mapping(path),
        source=str(path),
        known_outcomes=known_outcomes,
        known_arms=known_arms,
    )


def canonical_plan_text(data: Mapping[str, Any]) -> str:
    """Canonical form of a plan mapping: JSON, sorted keys, 2-space indent, one value a line.

    Key order, YAML whitespace, comments and quoting style do not change it; any change of
    a value, key or list order does.
    """
    return json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False, default=str) + "\n"


def plan_sha256(path: Path | str) -> str:
    """sha256 (hex) of the plan's canonical form."""
    return _sha(canonical_plan_text(read_plan_mapping(path)))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def lock_path_for(path: Path | str) -> Path:
    """``<plan stem>.lock.json`` beside the plan."""
    path = Path(path)
    return path.with_name(f"{path.stem}.lock.json")


def _read_lock(path: Path) -> dict[str, Any]:
    lp = lock_path_for(path)
    try:
        data = json.loads(lp.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanError(lp, "<file>", f"unreadable lock file: {exc}") from None
    for key in ("sha256", "locked_at", "canonical"):
        if not isinstance(data.get(key), str):
            raise PlanError(lp, key, "missing or not a string")
    if _sha(data["canonical"]) != data["sha256"]:
        raise PlanError(lp, "sha256", "does not match the sealed canonical text (lock tampered)")
    return data


def lock_plan(
    path: Path | str,
    outcome_rows: int | None = None,
    *,
    overwrite: bool = False,
    now: datetime | None = None,
) -> PlanLock:
    """Seal the plan: write ``<plan stem>.lock.json`` with its canonical sha256.

    Parameters
    ----------
    path
        The plan file. It must validate (:func:`load_analysis_plan`) before it can be sealed.
    outcome_rows
        How many outcome (score) rows existed when sealing; 0 documents that no outcome data
        had been seen. ``None`` records that it was not given.
    overwrite
        Re-seal a plan whose lock exists with a different hash. Without it, that raises;
        re-locking an unchanged plan returns the existing lock untouched.
    now
        Sealing time (UTC); defaults to the current time.

    Raises
    ------
    PlanError
        Invalid plan, negative ``outcome_rows``, or an existing lock of a different plan.
    """
    path = Path(path)
    if outcome_rows is not None and outcome_rows < 0:
        raise PlanError(path, "outcome_rows", "must be >= 0")
    data = read_plan_mapping(path)
    parse_analysis_plan(data, source=str(path))
    canonical = canonical_plan_text(data)
    sha = _sha(canonical)
    lp = lock_path_for(path)
    if lp.exists():
        old = _read_lock(path)
        if old["sha256"] == sha:
            return PlanLock(
                str(path), str(lp), sha, old["locked_at"], old.get("outcome_rows"), canonical
            )
        if not overwrite:
            raise PlanError(
                lp, "sha256", f"plan was sealed at {old['locked_at']} with a different hash; "
                "refusing to re-seal without overwrite"
            )
    stamp = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    lock = PlanLock(str(path), str(lp), sha, stamp, outcome_rows, canonical)
    lp.write_text(json.dumps(lock.to_dict(), indent=2) + "\n", encoding="utf-8")
    return lock


def verify_plan(path: Path | str) -> PlanVerification:
    """Compare the plan with its seal.

    Returns ``intact``, ``deviated`` (with a unified diff of the canonical forms, locked
    first) or ``unlocked``. The plan is not validated here, so a plan edited into an invalid
    state still reports its deviation.
    """
    path = Path(path)
    canonical = canonical_plan_text(read_plan_mapping(path))
    sha = _sha(canonical)
    if not lock_path_for(path).exists():
        return PlanVerification("unlocked", sha, None, "")
    lock = _read_lock(path)
    rows = lock.get("outcome_rows")
    if lock["sha256"] == sha:
        return PlanVerification("intact", sha, lock["sha256"], "", lock["locked_at"], rows)
    diff = "".join(
        difflib.unified_diff(
            lock["canonical"].splitlines(keepends=True),
            canonical.splitlines(keepends=True),
            fromfile=f"{path.name} (locked {lock['locked_at']})",
            tofile=f"{path.name} (current)",
        )
    )
    return PlanVerification("deviated", sha, lock["sha256"], diff, lock["locked_at"], rows)


AnalysisPlanError = PlanError
"""Alias of :class:`PlanError` (the name the CLI catches)."""
