"""Hosted instances: sign-in, tenant binding, what another clinic can (not) reach, deletion, the audit trail."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from pydantic import SecretStr

from migrator.background import RunRegistry
from migrator.console import ConsoleSettings, export
from migrator.errors import AuthError, ConfigError
from migrator.hosted import (
    CLINIC,
    OPERATOR,
    KeyLease,
    NotAllowed,
    OperatorDirectory,
    Principal,
    SignInRefused,
    SignInThrottle,
    audit_frame,
    connect_source,
    delete_as,
    hash_password,
    oidc_operator,
    resume_as,
    sign_in_clinic,
    sign_in_operator,
    stop_as,
    verify_password,
    visible_batch,
    visible_batches,
)
from migrator.ledger import BatchNotFound, Ledger
from tests.hosted_clinics import Clinics, hosted_plan, running_clinics, tenant_of, wait_until

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def clinics() -> Iterator[Clinics]:
    with running_clinics((3, 4)) as running:
        yield running


def hosted_settings(workspace: Path, clinics: Clinics) -> ConsoleSettings:
    return ConsoleSettings(workspace, 0, mode="hosted", api_url=clinics.url_template)


# --- operators ----------------------------------------------------------------------------


def test_passwords_are_salted_scrypt_hashes() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second and first.startswith("scrypt$16384$8$1$")  # a salt of its own each time
    assert PASSWORD not in first
    assert verify_password(PASSWORD, first) and verify_password(PASSWORD, second)
    assert not verify_password(PASSWORD + "!", first)
    assert not verify_password(PASSWORD, "scrypt$garbage") and not verify_password(PASSWORD, "md5$x$y$z$a$b")
    with pytest.raises(ConfigError, match="at least 12 characters"):
        hash_password("short")


def test_hash_password_command_prints_an_entry_the_directory_reads() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "migrator.hosted", "hash-password", "alice"],
        cwd=ROOT,
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert PASSWORD not in done.stdout + done.stderr
    secrets = tomllib.loads(done.stdout)
    directory = OperatorDirectory.from_secrets(secrets)
    assert list(directory.passwords) == ["alice"]
    assert verify_password(PASSWORD, directory.passwords["alice"])


def test_the_directory_reads_operators_and_the_oidc_allow_list() -> None:
    directory = OperatorDirectory.from_secrets(
        {
            "auth": {"client_id": "x"},
            "migrator": {
                "operator_emails": ["Alice@Example.com"],
                "operator_domains": ["support.example.org"],
                "oidc_provider": "company",
                "operators": {"bob": {"password_hash": hash_password(PASSWORD)}},
            },
        }
    )
    assert directory.has_passwords and directory.oidc_provider == "company"
    assert directory.allows_email("alice@example.com") and directory.allows_email("zed@support.example.org")
    assert not directory.allows_email("mallory@example.com") and not directory.allows_email("")
    assert not directory.allows_email("x@evil-support.example.org")
    with pytest.raises(ConfigError, match="needs a password_hash"):
        OperatorDirectory.from_secrets({"migrator": {"operators": {"eve": {"password": PASSWORD}}}})
    assert OperatorDirectory.from_secrets({}) == OperatorDirectory()


def test_an_operator_signs_in_with_a_password_and_failures_read_the_same(tmp_path: Path) -> None:
    directory = OperatorDirectory(passwords={"bob": hash_password(PASSWORD)})
    throttle = SignInThrottle(limit=3, window=60)
    with Ledger(tmp_path) as ledger:
        who = sign_in_operator(ledger, directory, "bob", PASSWORD, throttle=throttle)
        assert (who.role, who.name, who.tenant, who.scope, who.method) == (
            OPERATOR,
            "bob",
            None,
            None,
            "password",
        )
        with pytest.raises(SignInRefused) as wrong_password:
            sign_in_operator(ledger, directory, "bob", "not the password", throttle=throttle)
        with pytest.raises(SignInRefused) as unknown_name:
            sign_in_operator(ledger, directory, "mallory", PASSWORD, throttle=throttle)
        assert str(wrong_password.value) == str(unknown_name.value)
        for name, password in (("", PASSWORD), ("  ", PASSWORD), ("bob", "")):  # not attempts: not counted
            with pytest.raises(SignInRefused, match=r"^Enter your operator name and your password\.$"):
                sign_in_operator(ledger, directory, name, password, throttle=throttle)
        for _ in range(2):
            with pytest.raises(SignInRefused):
                sign_in_operator(ledger, directory, "bob", "guess", throttle=throttle)
        with pytest.raises(SignInRefused, match="Too many failed sign-ins"):  # even the right password, now
            sign_in_operator(ledger, directory, "bob", PASSWORD, throttle=throttle)
        log = ledger.audit_log()
    assert [(e["action"], e["role"], e["actor"]) for e in log[:3]] == [
        ("sign_in", OPERATOR, "operator:bob"),
        ("sign_in_refused", OPERATOR, "operator:bob"),
        ("sign_in_refused", OPERATOR, "operator:(unknown name)"),  # a name anyone typed is not an actor
    ]
    assert log[2]["detail"] == {"method": "password", "typed_name": "mallory"}
    assert len(log) == 5 and all(PASSWORD not in str(e) for e in log)  # the empty tries are not in it


def test_failed_sign_ins_from_one_address_do_not_lock_the_operator_out_from_another(tmp_path: Path) -> None:
    """Anyone can type an operator's name: their failures lock that name out for them, not for the operator.

    Guessing from many addresses at once still meets the name's own ceiling.
    """
    directory = OperatorDirectory(passwords={"bob": hash_password(PASSWORD)})
    throttle = SignInThrottle(limit=3, window=60, name_limit=5)
    with Ledger(tmp_path) as ledger:
        for _ in range(3):
            with pytest.raises(SignInRefused, match="do not match"):
                sign_in_operator(ledger, directory, "Bob", "guess", throttle=throttle, origin="203.0.113.9")
        with pytest.raises(
            SignInRefused, match="Too many failed sign-ins"
        ):  # the stranger, even with it right
            sign_in_operator(ledger, directory, "bob", PASSWORD, throttle=throttle, origin="203.0.113.9")
        who = sign_in_operator(ledger, directory, "bob", PASSWORD, throttle=throttle, origin="192.0.2.4")
        assert who.name == "bob"  # the operator, from their own address
        with pytest.raises(SignInRefused, match="do not match"):
            sign_in_operator(ledger, directory, "bob", "guess", throttle=throttle, origin="198.51.100.1")
        with pytest.raises(SignInRefused, match="do not match"):
            sign_in_operator(ledger, directory, "bob", "guess", throttle=throttle, origin="198.51.100.2")
        with pytest.raises(SignInRefused, match="Too many failed sign-ins"):  # five failures, from anywhere
            sign_in_operator(ledger, directory, "bob", PASSWORD, throttle=throttle, origin="192.0.2.4")
        refused = [e for e in ledger.audit_log() if e["action"] == "sign_in_refused"]
    assert refused[0]["detail"] == {"method": "password", "typed_name": "Bob", "from": "203.0.113.9"}


def test_a_name_typed_on_the_sign_in_page_cannot_pose_as_an_audit_line(tmp_path: Path) -> None:
    """QA: a 5,000-character name with a line break and a spreadsheet formula went into the trail as typed."""
    directory = OperatorDirectory(passwords={"bob": hash_password(PASSWORD)})
    typed = "bob (signed in OK)\n=cmd|' /C calc'!A0" + "x" * 5_000
    with Ledger(tmp_path) as ledger:
        with pytest.raises(SignInRefused):
            sign_in_operator(ledger, directory, typed, "any password at all")
        (line,) = ledger.audit_log()
        frame = audit_frame(ledger, Principal(OPERATOR, "bob"))
    assert line["actor"] == "operator:(unknown name)"
    kept = line["detail"]["typed_name"]
    assert len(kept) == 64 and "\n" not in kept and kept.startswith("bob (signed in OK) =cmd")
    exported = export(
        frame.with_columns(pl.lit("=HYPERLINK(1)").alias("actor")), "csv", spreadsheet_safe=True
    )
    assert b"'=HYPERLINK(1)" in exported and b",=HYPERLINK" not in exported


def test_an_oidc_user_is_an_operator_only_if_allowed(tmp_path: Path) -> None:
    directory = OperatorDirectory(emails=frozenset({"alice@example.com"}))
    with Ledger(tmp_path) as ledger:
        who = oidc_operator(ledger, directory, email="Alice@example.com", email_verified=True)
        assert who.operator and who.method == "oidc" and who.scope is None
        with pytest.raises(NotAllowed, match="not one of this instance's operators"):
            oidc_operator(ledger, directory, email="mallory@example.com")
        with pytest.raises(NotAllowed):
            oidc_operator(ledger, directory, email="alice@example.com", email_verified=False)
        with pytest.raises(NotAllowed):
            oidc_operator(ledger, directory, email=None)
        assert [e["action"] for e in ledger.audit_log()] == ["sign_in"] + ["sign_in_refused"] * 3


# --- the ledger, filtered by tenant ---------------------------------------------------------


def test_the_ledger_filters_batches_and_the_audit_trail_by_tenant(tmp_path: Path) -> None:
    with Ledger(tmp_path) as ledger:
        assert "006_audit_tenant_role" in ledger.applied_migrations()
        mine = ledger.create_batch(source_account="70003", destination="sqlite:/w/t/70003/clinic.db", plan={})
        theirs = ledger.create_batch(
            source_account="70004", destination="sqlite:/w/t/70004/clinic.db", plan={}
        )
        # A transfer from 70004 into 70003's Cliniko account belongs to both.
        into_mine = ledger.create_batch(source_account="70004", destination="cliniko:70003", plan={})
        assert into_mine.tenants == ("70004", "70003")
        assert {b.id for b in ledger.batches(tenant="70003")} == {mine.id, into_mine.id}
        assert {b.id for b in ledger.batches(tenant="70004")} == {theirs.id, into_mine.id}
        assert ledger.batches(tenant="99999") == []
        assert len(ledger.batches()) == 3
        assert ledger.batch(mine.id, tenant="70003") == mine

        # Another tenant's id reads exactly as an unknown one.
        with pytest.raises(BatchNotFound) as foreign:
            ledger.batch(theirs.id, tenant="70003")
        with pytest.raises(BatchNotFound) as unknown:
            ledger.batch("b20991231-235959-ffff", tenant="70003")
        assert str(foreign.value).replace(theirs.id, "ID") == str(unknown.value).replace(
            "b20991231-235959-ffff", "ID"
        )

        ledger.audit("sign_in", actor="clinic:Zoë", tenant="70003", role=CLINIC)
        ledger.audit_role = OPERATOR
        ledger.set_status(theirs.id, "stopped", actor="operator:bob")
        trail = ledger.audit_log(tenant="70003")
        assert {(e["action"], e["batch_id"]) for e in trail} == {
            ("run", mine.id),
            ("run", into_mine.id),
            ("sign_in", None),
        }
        stopped = ledger.audit_log(theirs.id)[-1]
        assert (stopped["action"], stopped["tenant"], stopped["role"]) == ("stop", "70004", OPERATOR)
        assert all(e["tenant"] for e in ledger.audit_log())  # every line says whose it is


# --- clinics: sign-in, connect, and another clinic's batches -------------------------------------


def test_a_clinic_signs_in_with_its_key_and_is_bound_to_its_account(clinics: Clinics, tmp_path: Path) -> None:
    config = clinics.config()
    with Ledger(tmp_path) as ledger:
        signed = sign_in_clinic(ledger, SecretStr(clinics.key(3)), config)
        who = signed.principal
        assert (who.role, who.tenant, who.account, who.scope) == (
            CLINIC,
            tenant_of(3),
            "Clinic 3",
            tenant_of(3),
        )
        assert signed.connection.identity.is_admin

        with pytest.raises(
            NotAllowed, match=r"^This key belongs to .+, who is not an administrator of Clinic 3;"
        ):
            sign_in_clinic(ledger, SecretStr(clinics.key(3, "source_non_admin")), config)
        with pytest.raises(AuthError):
            sign_in_clinic(ledger, SecretStr("MS" + "0" * 40 + "-au2"), config)

        # Connecting another clinic's key is refused; an operator may connect any clinic.
        with pytest.raises(NotAllowed, match="another Cliniko account than the one you signed in with"):
            connect_source(ledger, who, SecretStr(clinics.key(4)), config)
        operator = Principal(OPERATOR, "bob", method="password")
        assert connect_source(ledger, operator, SecretStr(clinics.key(4)), config).tenant == tenant_of(4)
        log = ledger.audit_log()
    assert [(e["action"], e["tenant"], e["role"]) for e in log] == [
        ("sign_in", tenant_of(3), CLINIC),
        ("connect", tenant_of(3), CLINIC),
        ("sign_in_refused", None, CLINIC),
        ("sign_in_refused", None, CLINIC),
        ("connect_refused", tenant_of(3), CLINIC),
        ("connect", tenant_of(4), OPERATOR),
    ]
    assert all(e["at"] for e in log)


def test_another_clinic_can_neither_see_nor_stop_resume_or_delete_a_batch(
    clinics: Clinics, tmp_path: Path
) -> None:
    settings = hosted_settings(tmp_path, clinics)
    registry = RunRegistry()
    with Ledger(tmp_path) as ledger:
        a = sign_in_clinic(ledger, SecretStr(clinics.key(3)), clinics.config())
        b = sign_in_clinic(ledger, SecretStr(clinics.key(4)), clinics.config())
    alice, bea = a.principal, b.principal
    lease = KeyLease(SecretStr(clinics.key(3)), tenant_of(3))
    plan = hosted_plan(clinics, 3, tmp_path)
    slow = clinics.config(pace=120)  # two requests a second: a run of several seconds
    handle = registry.start(
        plan,
        lease.key,  # type: ignore[arg-type]
        workspace=tmp_path,
        client_config=slow,
        actor=alice.actor,
        role=alice.role,
        on_end=lease.drop,
    )
    batch_id = handle.batch_id
    assert batch_id and handle.running

    with Ledger(tmp_path) as ledger:
        assert [x.id for x in visible_batches(ledger, alice)] == [batch_id]
        assert visible_batches(ledger, bea) == []
        unknown = "b20991231-235959-ffff"
        with pytest.raises(BatchNotFound) as not_there:
            visible_batch(ledger, bea, unknown)
        sentence = str(not_there.value).replace(unknown, "ID")
        bea_lease = KeyLease(SecretStr(clinics.key(4)), tenant_of(4))
        attempts = {
            "see": lambda: visible_batch(ledger, bea, batch_id),
            "stop": lambda: stop_as(ledger, registry, bea, batch_id),
            "resume": lambda: resume_as(
                ledger, registry, bea, batch_id, bea_lease, workspace=tmp_path, client_config=slow
            ),
            "delete": lambda: delete_as(settings, bea, batch_id, SecretStr(clinics.key(4))),
        }
        for what, attempt in attempts.items():
            with pytest.raises(BatchNotFound) as refused:
                attempt()
            assert str(refused.value).replace(batch_id, "ID") == sentence, what
        assert registry.get(batch_id, tenant=bea.scope) is None and registry.active(tenant=bea.scope) == []
        assert handle.running and not handle.stop_event.is_set()

        # Its own clinic stops it and resumes it; the lease's key goes when the run ends.
        stop_as(ledger, registry, alice, batch_id)
        assert handle.wait(60) and handle.state == "stopped"
        assert lease.dropped
        again = KeyLease(SecretStr(clinics.key(3)), tenant_of(3))
        resumed = resume_as(
            ledger, registry, alice, batch_id, again, workspace=tmp_path, client_config=clinics.config()
        )
        assert resumed.wait(60) and resumed.state == "completed", resumed.error
        wait_until(lambda: again.dropped)

        # An operator sees it, and reads every line about it with its tenant and role.
        operator = Principal(OPERATOR, "bob", method="password")
        assert [x.id for x in visible_batches(ledger, operator)] == [batch_id]
        trail = [e for e in ledger.audit_log(batch_id)]
    assert [(e["action"], e["tenant"], e["role"], e["actor"]) for e in trail] == [
        ("run", tenant_of(3), CLINIC, alice.actor),
        ("stop_requested", tenant_of(3), CLINIC, alice.actor),
        ("stop", tenant_of(3), CLINIC, alice.actor),
        ("resume", tenant_of(3), CLINIC, alice.actor),
        ("complete", tenant_of(3), CLINIC, alice.actor),
    ]
    with Ledger(tmp_path) as ledger:
        frame = audit_frame(ledger, operator)
        assert set(frame["tenant"].drop_nulls()) == {tenant_of(3), tenant_of(4)}
        # Each line names its clinic, as Cliniko named the account when its key was verified.
        named = set(frame.select("tenant", "account").unique().iter_rows())
        assert named == {(tenant_of(3), alice.account), (tenant_of(4), bea.account)}
        assert alice.account and alice.account != bea.account
        assert set(audit_frame(ledger, bea)["tenant"].drop_nulls()) == {tenant_of(4)}


def test_deleting_needs_an_administrators_key_of_that_account_checked_then(
    clinics: Clinics, tmp_path: Path
) -> None:
    settings = hosted_settings(tmp_path, clinics)
    plan = hosted_plan(clinics, 3, tmp_path)
    handle = RunRegistry().start(
        plan, SecretStr(clinics.key(3)), workspace=tmp_path, client_config=clinics.config(), role=CLINIC
    )
    assert handle.wait(60) and handle.state == "completed", handle.error
    batch_id = handle.batch_id
    assert batch_id
    alice = Principal(CLINIC, "Zoë Adams", tenant=tenant_of(3), account="Clinic 3")

    with pytest.raises(NotAllowed) as non_admin:
        delete_as(settings, alice, batch_id, SecretStr(clinics.key(3, "source_non_admin")))
    assert str(non_admin.value) == (
        "This key belongs to Kate Lawson, who is not an administrator of Clinic 3; "
        f"deleting batch {batch_id} needs an administrator's key."
    )
    with pytest.raises(NotAllowed, match=r"^This key belongs to another Cliniko account;"):
        delete_as(settings, alice, batch_id, SecretStr(clinics.key(4)))  # an administrator, of another clinic
    with Ledger(tmp_path) as ledger:
        assert ledger.batch(batch_id).status == "completed"

    done = delete_as(settings, alice, batch_id, SecretStr(clinics.key(3)))
    assert done.total > 0
    with Ledger(tmp_path) as ledger:
        assert ledger.batch(batch_id).status == "deleted"
        trail = [(e["action"], e["tenant"], e["role"]) for e in ledger.audit_log(batch_id)]
    assert trail == [
        ("run", tenant_of(3), CLINIC),
        ("complete", tenant_of(3), CLINIC),
        ("delete_refused", tenant_of(3), CLINIC),
        ("delete_refused", tenant_of(3), CLINIC),
        ("delete", tenant_of(3), CLINIC),
        ("deleted", tenant_of(3), CLINIC),
    ]


def test_each_clinic_has_its_own_store(tmp_path: Path) -> None:
    base = ConsoleSettings(tmp_path, 0, mode="hosted")
    assert base.for_tenant("70003").store_target == f"sqlite:{tmp_path / 'tenants' / '70003' / 'clinic.db'}"
    assert base.for_tenant(None).store_target == f"sqlite:{tmp_path / 'clinic.db'}"
    with pytest.raises(ConfigError):
        base.for_tenant("../70004")
    env = {
        "MIGRATOR_MODE": "hosted",
        "MIGRATOR_API_URL": "http://127.0.0.1:1/{shard}/v1",
        "MIGRATOR_WORKSPACE": "w",
    }
    hosted = ConsoleSettings.from_env(env)
    assert hosted.hosted and hosted.client_config().url_template == "http://127.0.0.1:1/{shard}/v1"
    local = ConsoleSettings.from_env({**env, "MIGRATOR_MODE": ""})
    assert not local.hosted and local.api_url is None  # local mode talks to Cliniko as before
    with pytest.raises(ConfigError, match="MIGRATOR_MODE must be 'local' or 'hosted'"):
        ConsoleSettings.from_env({"MIGRATOR_MODE": "shared"})
