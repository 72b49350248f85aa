"""One loader for every secret key of a study: the pseudonym key and the ledger key.

A study's *master* key comes from exactly one source, tried in an explicit order (see
:func:`load_study_key`); a source the study spec names must exist (an unset variable or a
missing file is an error, never a silent fallback to a fresh key). The key actually used
is *derived* from the master key with HKDF-SHA256 (RFC 5869), separately per purpose and
per study::

    key = HKDF(ikm=master, salt=b"flourish/v1", info=purpose + 0x1f + study_id)

so one deployment-wide master key (``FLOURISH_PSEUDONYM_KEY``) still gives different
pseudonyms in different studies, and the pseudonym key and the ledger key are never the
same bytes. A key's *fingerprint* (an HMAC of a fixed label under the derived key) can be
recorded and compared without revealing the key.

This module imports only the standard library.
"""

from __future__ import annotations

import hmac
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from privacy.files import create_secret_file

KeyPurpose = Literal["pseudonym", "ledger"]

MIN_KEY_BYTES = 32
"""Shortest accepted master key (its text, UTF-8 encoded, after stripping whitespace)."""

HKDF_SALT = b"flourish/v1"
FINGERPRINT_LABEL = b"flourish key fingerprint"
DERIVED_KEY_BYTES = 32
GENERATE_HINT = 'python -c "import secrets; print(secrets.token_hex(32))"'


class KeySourceError(ValueError):
    """No usable key: the message names the source (variable or file) and what to do.

    The message never contains the key itself.
    """


@dataclass(frozen=True)
class StudyKey:
    """A derived per-study, per-purpose key and where its master key came from.

    Attributes
    ----------
    key
        HKDF-SHA256 of the master key for this purpose and study (32 bytes); not shown
        in ``repr``.
    source
        Where the master key was read, in words (``environment variable X`` or
        ``file /path``); safe to print.
    fingerprint
        First 16 hex characters of ``HMAC-SHA256(key, b"flourish key fingerprint")``:
        identifies the key without revealing it.
    """

    key: bytes = field(repr=False)
    source: str
    fingerprint: str


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = DERIVED_KEY_BYTES) -> bytes:
    """HKDF with SHA-256 (RFC 5869): extract then expand to ``length`` bytes.

    Examples
    --------
    RFC 5869, test case 1:

    >>> okm = hkdf_sha256(bytes([11] * 22), bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    >>> okm.hex()[:32]
    '3cb25f25faacd57a90434f64d0362f2a'
    """
    if not 0 < length <= 255 * 32:
        raise ValueError(f"HKDF-SHA256 output length must be 1..8160 bytes, got {length}")
    prk = hmac.digest(salt or bytes(32), ikm, "sha256")
    out, block = b"", b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), "sha256")
        out += block
        counter += 1
    return out[:length]


def derive_study_key(master: bytes, purpose: str, study_id: str) -> bytes:
    """The per-study, per-purpose key derived from ``master`` (32 bytes).

    Examples
    --------
    >>> m = b"m" * 32
    >>> derive_study_key(m, "pseudonym", "a") != derive_study_key(m, "pseudonym", "b")
    True
    >>> derive_study_key(m, "pseudonym", "a") != derive_study_key(m, "ledger", "a")
    True
    """
    info = f"{purpose}\x1f{study_id}".encode()
    return hkdf_sha256(master, HKDF_SALT, info, DERIVED_KEY_BYTES)


def key_fingerprint(key: bytes) -> str:
    """First 16 hex characters of ``HMAC-SHA256(key, b"flourish key fingerprint")``.

    Examples
    --------
    >>> len(key_fingerprint(b"k" * 32))
    16
    """
    return hmac.digest(key, FINGERPRINT_LABEL, "sha256").hex()[:16]


def _check_master(master: bytes, source: str) -> bytes:
    if not master:
        raise KeySourceError(
            f"the key in {source} is empty; put a random key of at least {MIN_KEY_BYTES} "
            f"characters there, e.g. the output of: {GENERATE_HINT}"
        )
    if len(master) < MIN_KEY_BYTES:
        raise KeySourceError(
            f"the key in {source} is {len(master)} bytes long, shorter than the minimum of "
            f"{MIN_KEY_BYTES}; generate a longer one with: {GENERATE_HINT}"
        )
    return master


def _read_key_file(path: Path, source: str) -> bytes:
    try:
        return path.read_bytes().strip()
    except OSError as exc:
        raise KeySourceError(f"cannot read {source}: {exc.strerror or exc}") from None


def _read_or_create(path: Path, source: str, *, create: bool) -> bytes:
    if path.is_file():
        return _read_key_file(path, source)
    if not create:
        raise KeySourceError(
            f"{source} does not exist; restore it from backup (keys are never recreated "
            "silently, since a new key changes every pseudonym and breaks the ledger)"
        )
    try:
        return create_secret_file(path).strip()
    except FileExistsError:
        pass  # another process created it first; it may still be writing the bytes
    except OSError as exc:
        raise KeySourceError(f"cannot create {source}: {exc.strerror or exc}") from None
    deadline = time.monotonic() + 5.0
    while True:
        master = _read_key_file(path, source)
        if len(master) >= MIN_KEY_BYTES or time.monotonic() > deadline:
            return master
        time.sleep(0.01)


def load_study_key(
    *,
    purpose: KeyPurpose,
    study_id: str,
    env_var: str | None,
    key_file: Path | None,
    default_env: str,
    default_file: Path,
    create: bool = True,
) -> StudyKey:
    """Load a study's master key from one explicit source and derive its per-study key.

    Sources, first applicable wins:

    1. ``env_var`` when given (the spec names one): it must be set and non-empty;
    2. ``key_file`` when given (the spec names one): it must exist;
    3. ``default_env`` when set and non-empty in the environment (a deployment-wide
       master key; studies are kept apart by the HKDF ``info``);
    4. ``default_file`` (beside the study spec): read it, or, when absent and ``create``,
       create it with 32 random bytes in hex, mode 0600 from the first byte.

    Parameters
    ----------
    purpose
        ``"pseudonym"`` or ``"ledger"``; part of the HKDF ``info``.
    study_id
        The study's stable id; part of the HKDF ``info``.
    env_var, key_file
        The sources the study spec names, or None.
    default_env, default_file
        The conventional sources used when the spec names none.
    create
        Whether a missing ``default_file`` may be created.

    Returns
    -------
    StudyKey
        The derived key, the source in words and the key's fingerprint.

    Raises
    ------
    KeySourceError
        A named source is unset or missing, the default file is missing and ``create``
        is False, or the key is shorter than :data:`MIN_KEY_BYTES`. The message names the
        source and what to do, never the key.

    Examples
    --------
    >>> import os, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> os.environ.pop("DOCTEST_NO_SUCH_KEY", None)
    >>> k = load_study_key(purpose="pseudonym", study_id="s1", env_var=None, key_file=None,
    ...                    default_env="DOCTEST_NO_SUCH_KEY", default_file=folder / "p.key")
    >>> oct((folder / "p.key").stat().st_mode & 0o777), len(k.key), k.source.startswith("file")
    ('0o600', 32, True)
    >>> again = load_study_key(purpose="pseudonym", study_id="s1", env_var=None, key_file=None,
    ...                        default_env="DOCTEST_NO_SUCH_KEY", default_file=folder / "p.key")
    >>> again == k
    True
    >>> load_study_key(purpose="ledger", study_id="s1", env_var="DOCTEST_NO_SUCH_KEY",
    ...                key_file=None, default_env="X", default_file=folder / "p.key")
    Traceback (most recent call last):
    ...
    privacy.keys.KeySourceError: environment variable DOCTEST_NO_SUCH_KEY (named in ...) is not set; ...
    """
    label = f"{purpose} key"
    if env_var:
        source = f"environment variable {env_var}"
        value = os.environ.get(env_var)
        if value is None:
            raise KeySourceError(
                f"{source} (named in the study spec) is not set; set it to the study's "
                f"{label} (at least {MIN_KEY_BYTES} characters; a new one: {GENERATE_HINT}), "
                "or remove the setting from the spec"
            )
        master = _check_master(value.strip().encode("utf-8"), source)
    elif key_file is not None:
        path = Path(key_file)
        source = f"file {path}"
        if not path.is_file():
            raise KeySourceError(
                f"{source} (named in the study spec) does not exist; restore the study's "
                f"{label} there, or create a new one only if nothing was made with the old "
                f"one (e.g. {GENERATE_HINT} > {path}; chmod 600 {path})"
            )
        master = _check_master(_read_key_file(path, source), source)
    elif os.environ.get(default_env, "").strip():
        source = f"environment variable {default_env}"
        master = _check_master(os.environ[default_env].strip().encode("utf-8"), source)
    else:
        path = Path(default_file)
        source = f"file {path}"
        master = _check_master(_read_or_create(path, source, create=create), source)
    derived = derive_study_key(master, purpose, study_id)
    return StudyKey(key=derived, source=source, fingerprint=key_fingerprint(derived))
