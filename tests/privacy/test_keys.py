"""The one key loader: explicit sources, no silent fallback, derived per-study keys."""

from __future__ import annotations

import doctest
import hmac
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import privacy.keys
from orchestration.keys import ledger_secret, open_study_ledger, pseudonym_key
from orchestration.spec import load_study_spec
from privacy.keys import (
    MIN_KEY_BYTES,
    KeySourceError,
    StudyKey,
    derive_study_key,
    hkdf_sha256,
    key_fingerprint,
    load_study_key,
)
from privacy.ledger import LedgerError, LedgerIntegrityError, LedgerMissingError

MASTER = "m" * 40
OTHER = "o" * 40


def _load(tmp_path: Path, **kw) -> StudyKey:
    args = dict(purpose="pseudonym", study_id="s1", env_var=None, key_file=None,
                default_env="FLOURISH_TEST_DEFAULT_KEY", default_file=tmp_path / "p.key")
    args.update(kw)
    return load_study_key(**args)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("FLOURISH_TEST_DEFAULT_KEY", "FLOURISH_TEST_NAMED_KEY",
                 "FLOURISH_PSEUDONYM_KEY", "FLOURISH_LEDGER_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_hkdf_rfc5869_test_case_1():
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = hkdf_sha256(ikm, salt, info, 42)
    assert okm.hex() == ("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                         "34007208d5b887185865")
    # the extract step alone: RFC 5869's PRK
    prk = hmac.digest(salt, ikm, "sha256")
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"


def test_derived_key_is_hkdf_of_master_with_purpose_and_study(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOURISH_TEST_DEFAULT_KEY", MASTER)
    k = _load(tmp_path, study_id="trial-A")
    want = hkdf_sha256(MASTER.encode(), b"flourish/v1", b"pseudonym\x1ftrial-A", 32)
    assert k.key == want == derive_study_key(MASTER.encode(), "pseudonym", "trial-A")
    assert k.fingerprint == hmac.digest(want, b"flourish key fingerprint", "sha256").hex()[:16]
    assert k.fingerprint == key_fingerprint(k.key)
    assert MASTER not in repr(k) and repr(k.key) not in repr(k)


def test_shared_master_key_differs_per_study_and_purpose(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOURISH_TEST_DEFAULT_KEY", MASTER)
    a = _load(tmp_path, study_id="study-a")
    b = _load(tmp_path, study_id="study-b")
    led = _load(tmp_path, study_id="study-a", purpose="ledger")
    assert len({a.key, b.key, led.key}) == 3
    assert len({a.fingerprint, b.fingerprint, led.fingerprint}) == 3


def test_fingerprint_stable_across_loads(tmp_path):
    (tmp_path / "k").write_text(MASTER + "\n")
    first = _load(tmp_path, key_file=tmp_path / "k")
    (tmp_path / "k").write_text("  " + MASTER + "  \n\n")  # whitespace does not matter
    again = _load(tmp_path, key_file=tmp_path / "k")
    assert first == again and first.fingerprint == again.fingerprint
    assert len(first.fingerprint) == 16 and int(first.fingerprint, 16) >= 0


def test_source_order(tmp_path, monkeypatch):
    named_file = tmp_path / "named.key"
    named_file.write_text(OTHER)
    (tmp_path / "p.key").write_text("d" * 40)
    monkeypatch.setenv("FLOURISH_TEST_NAMED_KEY", MASTER)
    monkeypatch.setenv("FLOURISH_TEST_DEFAULT_KEY", "e" * 40)
    # 1. the named variable wins over everything
    k = _load(tmp_path, env_var="FLOURISH_TEST_NAMED_KEY")
    assert k.source == "environment variable FLOURISH_TEST_NAMED_KEY"
    assert k.key == derive_study_key(MASTER.encode(), "pseudonym", "s1")
    # 2. the named file wins over the default variable and file
    k = _load(tmp_path, key_file=named_file)
    assert k.source == f"file {named_file}" and k.key == derive_study_key(OTHER.encode(),
                                                                           "pseudonym", "s1")
    # 3. the default variable wins over the default file
    k = _load(tmp_path)
    assert k.source == "environment variable FLOURISH_TEST_DEFAULT_KEY"
    # 4. the default file
    monkeypatch.delenv("FLOURISH_TEST_DEFAULT_KEY")
    k = _load(tmp_path)
    assert k.source == f"file {tmp_path / 'p.key'}"
    assert k.key == derive_study_key(b"d" * 40, "pseudonym", "s1")


def test_named_env_unset_is_an_error_never_a_fallback(tmp_path, monkeypatch):
    (tmp_path / "p.key").write_text("d" * 40)
    monkeypatch.setenv("FLOURISH_TEST_DEFAULT_KEY", MASTER)
    with pytest.raises(KeySourceError) as info:
        _load(tmp_path, env_var="FLOURISH_TEST_NAMED_KEY")
    assert "FLOURISH_TEST_NAMED_KEY" in str(info.value) and "not set" in str(info.value)
    monkeypatch.setenv("FLOURISH_TEST_NAMED_KEY", "   ")
    with pytest.raises(KeySourceError, match="empty"):
        _load(tmp_path, env_var="FLOURISH_TEST_NAMED_KEY")


def test_named_file_missing_is_an_error_and_not_created(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOURISH_TEST_DEFAULT_KEY", MASTER)
    missing = tmp_path / "secrets" / "missing.key"
    with pytest.raises(KeySourceError) as info:
        _load(tmp_path, key_file=missing)
    assert str(missing) in str(info.value) and "does not exist" in str(info.value)
    assert not missing.exists() and not (tmp_path / "p.key").exists()


def test_default_file_not_created_when_create_is_false(tmp_path):
    with pytest.raises(KeySourceError, match="restore it from backup"):
        _load(tmp_path, create=False)
    assert not (tmp_path / "p.key").exists()


@pytest.mark.parametrize("where", ["named_env", "default_env", "named_file", "default_file"])
def test_short_key_refused_with_advice_and_without_the_key(tmp_path, monkeypatch, where):
    short = "x" * (MIN_KEY_BYTES - 1)
    (tmp_path / "short.key").write_text(short + "\n")
    (tmp_path / "p.key").write_text(short)
    kw: dict = {}
    if where == "named_env":
        monkeypatch.setenv("FLOURISH_TEST_NAMED_KEY", short)
        kw["env_var"] = "FLOURISH_TEST_NAMED_KEY"
    elif where == "default_env":
        monkeypatch.setenv("FLOURISH_TEST_DEFAULT_KEY", short)
    elif where == "named_file":
        kw["key_file"] = tmp_path / "short.key"
    with pytest.raises(KeySourceError) as info:
        _load(tmp_path, **kw)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(MIN_KEY_BYTES) in msg and "secrets.token_hex(32)" in msg
    assert short not in msg


def test_exactly_min_bytes_accepted_hex_or_text(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOURISH_TEST_DEFAULT_KEY", "a" * MIN_KEY_BYTES)
    assert len(_load(tmp_path).key) == 32
    monkeypatch.setenv("FLOURISH_TEST_DEFAULT_KEY", os.urandom(16).hex())  # 32 hex chars
    assert len(_load(tmp_path).key) == 32


def test_key_file_created_0600_with_o_excl(tmp_path, monkeypatch):
    calls = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *a, **kw):
        if ".p.key." in str(path) or str(path).endswith("p.key"):  # the key or its temp file
            calls.append((flags, mode))
        return real_open(path, flags, mode, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    old = os.umask(0o000)  # even with a permissive umask the file is never group/world readable
    try:
        k = _load(tmp_path)
    finally:
        os.umask(old)
    path = tmp_path / "p.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # its bytes are first written by one open(O_CREAT | O_EXCL, 0600) of a temporary file that
    # is then hard-linked to the name: never briefly 0644, never chmod-ed, never half-written
    assert calls and calls[0][1] == 0o600
    assert calls[0][0] & os.O_CREAT and calls[0][0] & os.O_EXCL
    assert len(path.read_text().strip()) == 64  # 32 random bytes as hex
    assert k == _load(tmp_path)  # read back, not recreated


def test_concurrent_creators_agree_on_one_key(tmp_path):
    results: list[StudyKey] = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            results.append(_load(tmp_path))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and len(results) == 8 and len(set(results)) == 1


def test_cli_style_error_has_no_traceback(tmp_path):
    """A short key surfaces as one KeySourceError line, not an internal traceback."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from privacy.keys import KeySourceError, load_study_key\n"
        "try:\n"
        "    load_study_key(purpose='ledger', study_id='s', env_var=None,\n"
        f"        key_file=Path({str(tmp_path / 'k')!r}), default_env='X_UNSET_X',\n"
        f"        default_file=Path({str(tmp_path / 'd')!r}))\n"
        "except KeySourceError as exc:\n"
        "    print('ERR', exc); sys.exit(2)\n"
    )
    (tmp_path / "k").write_text("short")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout.startswith("ERR the key in file") and "Traceback" not in proc.stderr


def test_doctests():
    result = doctest.testmod(privacy.keys,
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------ orchestration glue

SPEC = """
name = "Key trial"
{extra}
[participants]
path = "participants.csv"

[[survey]]
path = "survey/*.csv"
instruments = ["who5"]

[privacy]
epsilon = 2.0
{privacy}
"""


def _spec(tmp_path: Path, extra: str = "", privacy: str = ""):
    path = tmp_path / "study.toml"
    path.write_text(SPEC.format(extra=extra, privacy=privacy))
    return load_study_spec(path)


def test_study_keys_from_spec(tmp_path):
    spec = _spec(tmp_path)
    pk = pseudonym_key(spec)
    assert (tmp_path / "pseudonym.key").exists()
    with pytest.raises(KeySourceError):
        ledger_secret(spec, create=False)  # never created unless asked
    lk = ledger_secret(spec, create=True)
    assert (tmp_path / "ledger.key").exists()
    assert pk.key != lk.key and pk.source != lk.source
    for name in ("pseudonym.key", "ledger.key"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    # study_id (not the display name) is what keys are derived for
    renamed = _spec(tmp_path, extra='study_id = "Key trial"')
    assert pseudonym_key(renamed) == pk
    other = _spec(tmp_path, extra='study_id = "another"')
    assert pseudonym_key(other).key != pk.key


def test_spec_named_sources_must_exist(tmp_path, monkeypatch):
    spec = _spec(tmp_path, privacy='pseudonym_key_env = "FLOURISH_TEST_NAMED_KEY"\n'
                                   'ledger_key_file = "secrets/ledger.key"')
    with pytest.raises(KeySourceError, match="FLOURISH_TEST_NAMED_KEY"):
        pseudonym_key(spec)
    assert not (tmp_path / "pseudonym.key").exists()  # no silent fallback
    with pytest.raises(KeySourceError, match="secrets/ledger.key"):
        ledger_secret(spec, create=True)
    assert not (tmp_path / "secrets" / "ledger.key").exists()


def test_open_study_ledger(tmp_path):
    spec = _spec(tmp_path)
    with pytest.raises(LedgerMissingError):
        open_study_ledger(spec, create=False)
    assert not spec.ledger_path.exists() and not (tmp_path / "ledger.key").exists()
    led = open_study_ledger(spec)
    assert led.budget == 2.0 and led.anchor_path == spec.ledger_anchor_path
    assert led.key_fingerprint == pseudonym_key(spec).fingerprint
    led.charge_and_record("r1", "public_suite", "v1", 0.5, lambda: "{}")
    assert spec.ledger_anchor_path.exists()
    again = open_study_ledger(spec, create=False)
    assert again.ledger_id == led.ledger_id and again.verify().ok
    # a lost ledger key is an error to restore, never silently replaced
    (tmp_path / "ledger.key").unlink()
    with pytest.raises(KeySourceError, match="restore"):
        open_study_ledger(spec, create=True)
    assert not (tmp_path / "ledger.key").exists()


def test_open_study_ledger_refuses_a_deleted_ledger_before_creating_anything(tmp_path):
    spec = _spec(tmp_path)
    open_study_ledger(spec).charge_and_record("r1", "public_suite", "v1", 0.5, lambda: "{}")
    spec.ledger_path.unlink()
    (tmp_path / "ledger.key").unlink()
    with pytest.raises(LedgerIntegrityError) as info:
        open_study_ledger(spec, create=True)
    assert "missing" in str(info.value) and "anchor" in str(info.value)
    assert not spec.ledger_path.exists() and not (tmp_path / "ledger.key").exists()


def test_open_study_ledger_needs_privacy_section(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(SPEC.replace("[privacy]\nepsilon = 2.0\n", "").format(extra="", privacy=""))
    with pytest.raises(LedgerError, match=r"\[privacy\]"):
        open_study_ledger(load_study_spec(path))
