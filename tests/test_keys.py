"""The key parsing table: shard from the suffix, clear errors that never echo the key."""

from __future__ import annotations

import re

import pytest
from pydantic import SecretStr

from migrator.cliniko.keys import base_url_for, parse_key
from migrator.errors import ConfigError

BODY = "MS0123456789abcdefABCDEF0123456789abcdef"


@pytest.mark.parametrize(
    ("raw", "shard"),
    [
        (BODY, "au1"),  # no suffix: the default shard
        (f"{BODY}-au1", "au1"),
        (f"{BODY}-au2", "au2"),
        (f"{BODY}-uk1", "uk1"),
        (f"{BODY}-ca1", "ca1"),
        (f"{BODY}-eu1", "eu1"),
        (f"{BODY}-us1", "us1"),
        (f"{BODY}-UK1", "uk1"),  # case does not matter
        (f"{BODY}-xy12", "xy12"),  # an unlisted shard that has the shape is accepted
        (f"  {BODY}-uk1\n", "uk1"),  # pasted with whitespace
    ],
)
def test_shard_is_read_from_the_suffix(raw: str, shard: str) -> None:
    assert parse_key(raw).shard == shard


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (f"{BODY}-u1", "not a Cliniko shard"),
        (f"{BODY}-uk123", "not a Cliniko shard"),
        (f"{BODY}-1uk", "not a Cliniko shard"),
        (f"{BODY}-", "not a Cliniko shard"),
        (f"{BODY}-au1-uk1", "2 '-' separators"),
        ("short-au1", "does not look like a Cliniko key"),
        ("my key with spaces", "does not look like a Cliniko key"),
    ],
)
def test_malformed_keys_get_a_sentence_without_the_key(raw: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_key(raw)
    message = str(info.value)
    assert says in message
    assert message.endswith(".")
    if raw.strip():
        assert raw.strip().split("-")[0] not in message


def test_key_never_shows_in_repr_or_str() -> None:
    key = parse_key(SecretStr(f"{BODY}-uk1"))
    for text in (repr(key), str(key), f"{key}", repr([key])):
        assert BODY not in text
    assert key.region == "United Kingdom"
    assert len(key.fingerprint) == 12


def test_a_keys_name_is_what_refusals_call_it_and_not_part_of_the_key() -> None:
    named = parse_key(f"{BODY}-uk1", name="destination API key")
    assert named.name == "destination API key" and parse_key(f"{BODY}-uk1").name == "API key"
    assert named == parse_key(f"{BODY}-uk1")  # the same key, whatever it is called


def test_base_url_from_template_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGRATOR_API_URL", raising=False)
    assert base_url_for("uk1") == "https://api.uk1.cliniko.com/v1"
    monkeypatch.setenv("MIGRATOR_API_URL", "http://127.0.0.1:8765/{shard}/v1/")
    assert base_url_for("au2") == "http://127.0.0.1:8765/au2/v1"
    with pytest.raises(ConfigError, match="must contain"):
        base_url_for("au1", "http://example.test/v1")
    for template, said in (
        ("http://[::1/{shard}", "is not a valid URL"),  # a bracket left open
        ("ftp://files.test/{shard}", "must be an http(s) address"),
        ("{shard}", "must be an http(s) address"),
    ):
        with pytest.raises(ConfigError, match=re.escape(said)):
            base_url_for("au1", template)
