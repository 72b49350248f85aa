"""A study's keys and its privacy ledger, from its spec (thin glue over privacy.keys).

Two distinct master keys, each from one explicit source (:func:`privacy.keys.load_study_key`):

* the *pseudonym* key: ``[privacy] pseudonym_key_env`` / ``pseudonym_key_file``, else
  ``FLOURISH_PSEUDONYM_KEY``, else ``pseudonym.key`` beside study.toml (created 0600);
* the *ledger* key: ``[privacy] ledger_key_env`` / ``ledger_key_file``, else
  ``FLOURISH_LEDGER_KEY``, else ``ledger.key`` beside study.toml (created 0600 together
  with a new ledger, never for an existing one).

Both are derived per study (``study_id``, default the name), so a shared deployment key
gives different pseudonyms and ledger keys in different studies. Keys never go into
``output_dir`` (users share and delete outputs).
"""

from __future__ import annotations

from typing import Literal

from orchestration.spec import StudySpec
from privacy.keys import StudyKey, load_study_key
from privacy.ledger import (
    RECOVERY,
    LedgerError,
    LedgerIntegrityError,
    LedgerMissingError,
    PrivacyLedger,
)

PSEUDONYM_ENV_DEFAULT = "FLOURISH_PSEUDONYM_KEY"
LEDGER_ENV_DEFAULT = "FLOURISH_LEDGER_KEY"
PSEUDONYM_KEY_FILE = "pseudonym.key"
LEDGER_KEY_FILE = "ledger.key"
_DEFAULTS = {"pseudonym": (PSEUDONYM_ENV_DEFAULT, PSEUDONYM_KEY_FILE),
             "ledger": (LEDGER_ENV_DEFAULT, LEDGER_KEY_FILE)}


def _study_key(spec: StudySpec, purpose: Literal["pseudonym", "ledger"], *,
               create: bool) -> StudyKey:
    """The spec's named sources for ``purpose``, then its defaults (one loader for both)."""
    p = spec.privacy
    env = getattr(p, f"{purpose}_key_env", None) if p is not None else None
    named = getattr(p, f"{purpose}_key_file", None) if p is not None else None
    default_env, default_file = _DEFAULTS[purpose]
    return load_study_key(
        purpose=purpose, study_id=spec.study_key_id, env_var=env,
        key_file=spec.resolve(named) if named else None, default_env=default_env,
        default_file=spec.base_dir / default_file, create=create,
    )


def pseudonym_key(spec: StudySpec) -> StudyKey:
    """The study's derived pseudonymisation key (``pseudonym.key`` created on first use).

    Raises
    ------
    privacy.keys.KeySourceError
        A source the spec names is missing, or the key is too short.
    """
    return _study_key(spec, "pseudonym", create=True)


def ledger_secret(spec: StudySpec, *, create: bool) -> StudyKey:
    """The study's derived ledger key; ``ledger.key`` is created only when ``create``.

    Raises
    ------
    privacy.keys.KeySourceError
        A source the spec names is missing, the default file is missing and ``create`` is
        False, or the key is too short.
    """
    return _study_key(spec, "ledger", create=create)


def open_study_ledger(spec: StudySpec, *, create: bool = True) -> PrivacyLedger:
    """The study's privacy ledger, keyed and anchored as its spec says.

    Parameters
    ----------
    spec
        The study spec; must have a ``[privacy]`` section.
    create
        Create the ledger (and a missing ``ledger.key`` / ``pseudonym.key``) when the ledger
        file does not exist yet. A key is never created for a ledger that exists: a lost
        key must be restored, not replaced. When False nothing is created.

    Raises
    ------
    privacy.ledger.LedgerMissingError
        ``create`` is False and there is no ledger file.
    privacy.ledger.LedgerError
        The spec has no ``[privacy]`` section, or the file is not a usable ledger (old
        format, other budget); :class:`privacy.ledger.LedgerIntegrityError` when the ledger
        file is missing but the anchor file records one.
    privacy.keys.KeySourceError
        A key source is missing or too short.
    """
    if spec.privacy is None:
        raise LedgerError(
            f"{spec.spec_path}: the study has no [privacy] section, so it has no privacy "
            "budget and no ledger; add [privacy] epsilon = <total budget> to publish releases"
        )
    path = spec.ledger_path
    exists = path.exists()
    if not create and not exists:
        raise LedgerMissingError(f"{path}: no privacy ledger here (nothing was created)")
    if not exists and spec.ledger_anchor_path.exists():
        # Refuse before any key is created: a new ledger would reset the budget.
        raise LedgerIntegrityError(path, [
            f"the ledger file {path} is missing, but the anchor file "
            f"{spec.ledger_anchor_path} records a ledger with releases: the ledger was deleted "
            f"or moved; {RECOVERY} (together with its ledger key)"
        ])
    new = create and not exists
    secret = ledger_secret(spec, create=new)
    fingerprint = _study_key(spec, "pseudonym", create=new).fingerprint
    return PrivacyLedger(
        path,
        spec.privacy.epsilon,
        secret=secret.key,
        key_fingerprint=fingerprint,
        anchor_path=spec.ledger_anchor_path,
        create=create,
    )
