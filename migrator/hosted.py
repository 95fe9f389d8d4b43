"""Hosted instances: who is signed in, which clinic (tenant) they act for, and what they may touch.

``MIGRATOR_MODE=hosted`` turns the console into a service many clinics share. Two kinds
of people sign in (a :class:`Principal` each):

- a **clinic** user, with nothing but an administrator's Cliniko API key: the key is
  verified against Cliniko and the session is bound to that account, the *tenant*
  (its account id, from ``/settings/public``). A clinic sees and acts only on its
  own batches: those whose source, or whose Cliniko destination, is its account;
- an **operator** (support staff), by Streamlit's OIDC login (:func:`oidc_operator`) or
  by a name and password whose salted scrypt hash is in the secrets file
  (:func:`sign_in_operator`, :func:`hash_password`). An operator sees every batch.

Every filter is applied here and in :class:`~migrator.ledger.Ledger` (``tenant=``),
never in a page, so a notebook or a CLI gets the same answers. Another tenant's batch
id raises the same :class:`~migrator.ledger.BatchNotFound` as an unknown one.

>>> signed = sign_in_clinic(ledger, key, config)                        # doctest: +SKIP
>>> signed.principal.tenant, signed.principal.role                      # doctest: +SKIP
('40117', 'clinic')
>>> visible_batches(ledger, signed.principal)                           # doctest: +SKIP
[Batch(id='b20261121-135301-3f9a', ...)]

**Keys are never stored.** A clinic's key is held by a :class:`KeyLease` in the
session's memory only while it is needed: until the run it was lent to ends
(:meth:`KeyLease.until_run_ends`), the session signs out, or the session goes. The
ledger, the audit trail, logs and error messages never see it; an administrator's key
typed to delete a batch is used for that one check and dropped.

Every action is audited with the tenant, the role and the time: ``sign_in``,
``sign_in_refused``, ``sign_out``, ``connect``, ``preflight``, ``run``,
``stop_requested`` / ``stop``, ``resume``, ``delete`` / ``deleted``, ``delete_refused``,
``go_live`` / ``go_live_refused``, ``review_read`` / ``review_read_refused`` (and
``complete``, ``fail``, written by the engine with the run's role).

**Into another Cliniko account.** A clinic (or an operator for it) may write into another
Cliniko account whose administrator-practitioner key it holds
(:func:`connect_cliniko_destination`); the batch then belongs to both accounts. Going live
(:func:`go_live_as`) and deleting (:func:`delete_as`) take an administrator's key of the
destination account at that moment, as deleting from the clinic store takes one of the
clinic's. After a run has taken the keys with it, the Review page's reads take any user's
key of the account concerned, for that read only: counting the destination
(:func:`count_as`), counting at the source or reading its invoices for balances
(:func:`source_as`).

Create an operator's secrets entry with ``python -m migrator.hosted hash-password NAME``.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from pydantic import SecretStr

from migrator.cliniko.client import ClientConfig, ClinikoClient, Identity
from migrator.cliniko.keys import parse_key
from migrator.console import ClinikoKeys, ConsoleSettings, DestinationCheck, check_cliniko_destination
from migrator.errors import ConfigError, MigratorError
from migrator.ledger import Batch, Ledger
from migrator.plan import Plan

if TYPE_CHECKING:
    from migrator.background import RunHandle, RunRegistry
    from migrator.batches import DeletionPlan
    from migrator.destinations.cliniko import GoLiveResult

__all__ = [
    "CLINIC",
    "OPERATOR",
    "ROLES",
    "ClinicSignIn",
    "Connection",
    "KeyLease",
    "NotAllowed",
    "OperatorDirectory",
    "Principal",
    "SignInRefused",
    "SignInThrottle",
    "audit_frame",
    "connect_cliniko_destination",
    "connect_destination",
    "connect_source",
    "delete_as",
    "drop_all",
    "go_live_as",
    "hash_password",
    "oidc_operator",
    "plan_for_tenant",
    "record",
    "resume_as",
    "sign_in_clinic",
    "sign_in_operator",
    "sign_out",
    "stop_as",
    "verify_password",
    "visible_batch",
    "visible_batches",
]

CLINIC = "clinic"
OPERATOR = "operator"
ROLES = (CLINIC, OPERATOR)

# scrypt's cost: 16 MiB of memory and ~50 ms per check; the parameters travel with the hash.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_SALT_BYTES = 16
# Compared against when the name is unknown, so that a wrong name takes as long as a wrong password.
_DUMMY_SALT = b"\x00" * _SALT_BYTES


class SignInRefused(MigratorError):
    """The key, the name or the password was not accepted (one sentence, never the secret)."""


class NotAllowed(MigratorError):
    """The signed-in person may not do this (another clinic's account, a clinic-only or operator-only act)."""


# --- who is signed in ------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Whoever is signed in to a hosted console.

    Attributes:
        role: :data:`CLINIC` or :data:`OPERATOR`.
        name: the Cliniko user (a clinic) or the operator's login / e-mail.
        tenant: a clinic's account id; ``None`` for an operator, who sees every tenant.
        account: the clinic's account name, for people to read.
        method: how they signed in: ``api_key``, ``password`` or ``oidc``.
    """

    role: str
    name: str
    tenant: str | None = None
    account: str | None = None
    method: str = "api_key"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}")
        if self.role == CLINIC and not self.tenant:
            raise ValueError("a clinic principal needs its tenant")

    @property
    def operator(self) -> bool:
        return self.role == OPERATOR

    @property
    def scope(self) -> str | None:
        """The tenant filter of every look-up made for this person: ``None`` (everything) for an operator."""
        return None if self.operator else self.tenant

    @property
    def actor(self) -> str:
        """How the audit trail names them: ``clinic:Jane Smith``, ``operator:alice``."""
        return f"{self.role}:{self.name}"

    def sees(self, batch: Batch) -> bool:
        """Whether this person may see (and act on) ``batch``."""
        return self.operator or (self.tenant is not None and self.tenant in batch.tenants)


def record(
    ledger: Ledger,
    principal: Principal | None,
    action: str,
    *,
    tenant: str | None = None,
    batch_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
    role: str | None = None,
) -> None:
    """Audit one action of ``principal`` (``None``: someone not signed in yet) with tenant, role and time."""
    ledger.audit(
        action,
        actor=principal.actor if principal is not None else "anonymous",
        batch_id=batch_id,
        detail=dict(detail or {}),
        tenant=tenant or (principal.tenant if principal is not None else None),
        role=role or (principal.role if principal is not None else None),
    )


# --- keys held for a while ---------------------------------------------------------------


class KeyLease:
    """Keys of one account, held in the session only while a run may need them.

    The session keeps the lease, never the bare key; :meth:`drop` forgets it (sign-out,
    disconnect), and :meth:`until_run_ends` has the run drop it as it ends, whichever
    thread that happens in and whether or not a page is open. A Cliniko destination's
    lease also holds its note authors' keys (``extra``), dropped with the main one.
    """

    def __init__(self, key: SecretStr, tenant: str, extra: Iterable[SecretStr] = ()) -> None:
        self._key: SecretStr | None = key
        self._extra: tuple[SecretStr, ...] = tuple(extra)
        self.tenant = tenant
        self._lock = threading.Lock()

    @property
    def key(self) -> SecretStr | None:
        """The key, or ``None`` once dropped."""
        with self._lock:
            return self._key

    @property
    def extra(self) -> tuple[SecretStr, ...]:
        """The other keys held with it (empty once dropped)."""
        with self._lock:
            return self._extra

    @property
    def dropped(self) -> bool:
        return self.key is None

    def drop(self) -> None:
        """Forget the keys (idempotent)."""
        with self._lock:
            self._key = None
            self._extra = ()

    def until_run_ends(self, handle: RunHandle) -> None:
        """Drop the keys when ``handle``'s run ends (at once if it already has)."""
        handle.on_end(self.drop)

    def __repr__(self) -> str:
        return f"KeyLease(tenant={self.tenant!r}, held={not self.dropped}, extra={len(self.extra)})"


def drop_all(*leases: KeyLease | None) -> Callable[[], None]:
    """One callback that drops every given lease: what a run calls as it ends."""
    held = [lease for lease in leases if lease is not None]

    def drop() -> None:
        for lease in held:
            lease.drop()

    return drop


# --- operators: password hashes and OIDC allow-list ------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=128 * r * (n + p + 2) * 2
    )


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A salted scrypt hash of ``password`` for the secrets file: ``scrypt$N$r$p$<salt>$<hash>`` (base64).

    >>> hash_password("correct horse battery staple").startswith("scrypt$16384$8$1$")
    True

    Raises:
        ConfigError: the password is shorter than 12 characters.
    """
    if len(password) < 12:
        raise ConfigError("An operator's password needs at least 12 characters.")
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches a :func:`hash_password` hash (constant-time compare; ``False`` if malformed)."""
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        got = _scrypt(password, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


@dataclass(frozen=True)
class OperatorDirectory:
    """Who may sign in as an operator, read from the ``[migrator]`` table of ``.streamlit/secrets.toml``.

    Attributes:
        passwords: operator name -> :func:`hash_password` hash (``[migrator.operators.NAME]``).
        emails: e-mail addresses allowed in by OIDC (``operator_emails``), lower case.
        domains: e-mail domains allowed in by OIDC (``operator_domains``), lower case.
        oidc_provider: the ``[auth.NAME]`` provider to sign in with; ``None``: ``[auth]`` itself.

    Example (``secrets.toml``)::

        [migrator]
        operator_emails = ["alice@example.com"]
        [migrator.operators.bob]
        password_hash = "scrypt$16384$8$1$...$..."
    """

    passwords: dict[str, str] = field(default_factory=dict)
    emails: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()
    oidc_provider: str | None = None

    @classmethod
    def from_secrets(cls, secrets_: Mapping[str, Any]) -> OperatorDirectory:
        """Read the directory from the secrets (``st.secrets`` as a mapping).

        Raises:
            ConfigError: an operator entry has no ``password_hash``, or a list is not a list.
        """
        table = secrets_.get("migrator") or {}
        passwords: dict[str, str] = {}
        for name, entry in dict(table.get("operators") or {}).items():
            hashed = (entry or {}).get("password_hash") if isinstance(entry, Mapping) else None
            if not isinstance(hashed, str) or not hashed.startswith("scrypt$"):
                raise ConfigError(
                    f"Operator {name!r} in the secrets file needs a password_hash made by "
                    "'python -m migrator.hosted hash-password'."
                )
            passwords[str(name)] = hashed

        def names(key: str) -> frozenset[str]:
            value = table.get(key) or []
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise ConfigError(f"[migrator] {key} in the secrets file must be a list.")
            return frozenset(str(v).strip().lower().lstrip("@") for v in value if str(v).strip())

        provider = table.get("oidc_provider")
        return cls(passwords, names("operator_emails"), names("operator_domains"), provider or None)

    @property
    def has_passwords(self) -> bool:
        return bool(self.passwords)

    def allows_email(self, email: str) -> bool:
        """Whether an OIDC user with this (verified) e-mail is an operator."""
        address = email.strip().lower()
        return bool(address) and (address in self.emails or address.rpartition("@")[2] in self.domains)


class SignInThrottle:
    """Slows password guessing without letting anyone lock an operator out from elsewhere.

    After ``limit`` failures for a name from one address (the browser's, as the server sees
    it) within ``window`` s, that name is refused from that address for that long; after
    ``name_limit`` failures for it from anywhere, from everywhere. So a stranger typing an
    operator's name with wrong passwords locks only themselves out, while guessing from
    many addresses at once still meets a ceiling. Behind a proxy that hides the browser's
    address every client shares one, and the first limit applies to all of them.

    One per server process (the console keeps it with ``st.cache_resource``).
    """

    def __init__(self, limit: int = 5, window: float = 900.0, name_limit: int = 50) -> None:
        self.limit, self.window, self.name_limit = limit, window, name_limit
        self._failures: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> list[float]:
        recent = [t for t in self._failures.get(key, []) if now - t < self.window]
        if recent:
            self._failures[key] = recent
        else:
            self._failures.pop(key, None)
        return recent

    def check(self, name: str, origin: str | None = None) -> None:
        """Raise :class:`SignInRefused` while ``name`` is locked out (from ``origin``, or everywhere)."""
        name, now = name.lower(), time.monotonic()
        with self._lock:
            here = len(self._recent((name, origin or ""), now))
            everywhere = 0
            for key in list(self._failures):  # every key: the lapsed go, so typed names do not pile up
                recent = self._recent(key, now)
                everywhere += len(recent) if key[0] == name else 0
        if here >= self.limit or everywhere >= self.name_limit:
            raise SignInRefused(
                f"Too many failed sign-ins for this name; wait {int(self.window // 60)} minutes and try again."
            )

    def failed(self, name: str, origin: str | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            key = (name.lower(), origin or "")
            self._failures[key] = [*self._recent(key, now), now]

    def succeeded(self, name: str, origin: str | None = None) -> None:
        with self._lock:
            self._failures.pop((name.lower(), origin or ""), None)


#: The most characters of a name typed on the sign-in page that the audit trail keeps.
TYPED_NAME_LIMIT = 64


def typed_name(name: str) -> str:
    r"""A name someone typed, as the audit trail keeps it: control characters as spaces, at most 64 characters.

    >>> typed_name("bob\n=cmd")
    'bob =cmd'
    """
    printable = "".join(c if c.isprintable() else " " for c in name)
    return printable if len(printable) <= TYPED_NAME_LIMIT else printable[: TYPED_NAME_LIMIT - 1] + "…"


def sign_in_operator(
    ledger: Ledger,
    directory: OperatorDirectory,
    name: str,
    password: str,
    *,
    throttle: SignInThrottle | None = None,
    origin: str | None = None,
) -> Principal:
    """Sign an operator in with a name and password from the secrets file; audited either way.

    ``origin`` is the address the attempt came from (``st.context.ip_address``): the
    throttle counts failures per name and address, and a refusal's audit line keeps it.

    A refusal is audited under the operator's name when it is one of this instance's; any
    other name, typed by anyone on the sign-in page, goes into the line's detail only,
    printable and cut to :data:`TYPED_NAME_LIMIT` characters, so it cannot pose as an
    operator's line or swell the trail. An empty name or password is not an attempt: it is
    answered, not audited or counted towards the lock-out.

    Raises:
        SignInRefused: an empty name or password; unknown name or wrong password (the same
            sentence for both), or too many failures for that name.
    """
    name = name.strip()
    if not name or not password:
        raise SignInRefused("Enter your operator name and your password.")
    if throttle is not None:
        throttle.check(name, origin)
    hashed = directory.passwords.get(name)
    if hashed is None:
        _scrypt(password, _DUMMY_SALT, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)  # the same time as a wrong password
        ok = False
    else:
        ok = verify_password(password, hashed)
    if not ok:
        if throttle is not None:
            throttle.failed(name, origin)
        known = hashed is not None
        ledger.audit(
            "sign_in_refused",
            actor=f"{OPERATOR}:{name if known else '(unknown name)'}",
            role=OPERATOR,
            detail={
                "method": "password",
                **({} if known else {"typed_name": typed_name(name)}),
                **({"from": origin} if origin else {}),
            },
        )
        raise SignInRefused("That name and password do not match an operator of this instance.")
    if throttle is not None:
        throttle.succeeded(name, origin)
    principal = Principal(OPERATOR, name, method="password")
    record(ledger, principal, "sign_in", detail={"method": "password"})
    return principal


def oidc_operator(
    ledger: Ledger, directory: OperatorDirectory, *, email: str | None, email_verified: bool | None = None
) -> Principal:
    """The operator an OIDC sign-in (``st.login``) stands for, audited; the identity provider did the checking.

    Args:
        email: the ``email`` claim of the ID token.
        email_verified: the ``email_verified`` claim; an explicit ``False`` is refused.

    Raises:
        NotAllowed: the e-mail is missing, unverified or not in ``operator_emails`` / ``operator_domains``.
    """
    address = (email or "").strip()
    if not address or email_verified is False or not directory.allows_email(address):
        ledger.audit(
            "sign_in_refused",
            actor=f"{OPERATOR}:{address or 'unknown'}",
            role=OPERATOR,
            detail={"method": "oidc"},
        )
        raise NotAllowed(
            f"{address or 'This account'} is not one of this instance's operators; ask an administrator "
            "to add it to operator_emails in the secrets file."
        )
    principal = Principal(OPERATOR, address, method="oidc")
    record(ledger, principal, "sign_in", detail={"method": "oidc"})
    return principal


def sign_out(ledger: Ledger, principal: Principal, *leases: KeyLease | None) -> None:
    """Audit the sign-out and drop the session's keys."""
    drop_all(*leases)()
    record(ledger, principal, "sign_out")


# --- clinics: signing in and connecting with a key ----------------------------------------


def account_id(client: ClinikoClient) -> str:
    """The key's account id (``/settings/public``, readable by any user): the tenant.

    Raises:
        ConfigError: the answer has no account id.
    """
    value = client.account_id()
    if not value:
        raise ConfigError("Cliniko did not say which account this key belongs to; try again.")
    return value


@dataclass(frozen=True)
class Connection:
    """A verified key's account: who it is (``identity``) and its tenant (account id)."""

    identity: Identity
    tenant: str

    @property
    def account(self) -> str:
        return self.identity.account or self.tenant


def _verify(key: SecretStr, config: ClientConfig, name: str = "API key") -> Connection:
    with ClinikoClient(parse_key(key, name=name), config=config) as client:
        identity = client.identity()
        return Connection(identity, account_id(client))


def _admin(connection: Connection, what: str) -> None:
    identity = connection.identity
    if not identity.is_admin:
        raise NotAllowed(
            f"This key belongs to {identity.user}, who is not an administrator of {connection.account}; "
            f"{what} needs an administrator's key."
        )


@dataclass(frozen=True)
class ClinicSignIn:
    """A clinic signed in: who (``principal``) and the key's :class:`Connection`."""

    principal: Principal
    connection: Connection


def sign_in_clinic(ledger: Ledger, key: SecretStr, config: ClientConfig) -> ClinicSignIn:
    """Sign a clinic in with its API key: verified against Cliniko, bound to the key's account.

    Audited as ``sign_in`` and ``connect`` (the key is the source's). The key is not kept:
    hold it in a :class:`KeyLease` while it is needed.

    Raises:
        ConfigError: a malformed key (before any request).
        AuthError, APIError: Cliniko refused the key or could not be reached.
        NotAllowed: the key's user is not an administrator.
    """
    try:
        connection = _verify(key, config)
        _admin(connection, "signing in to migrate a clinic")
    except MigratorError as exc:
        ledger.audit(
            "sign_in_refused",
            actor=f"{CLINIC}:unknown",
            role=CLINIC,
            detail={"method": "api_key", "why": type(exc).__name__},
        )
        raise
    identity = connection.identity
    principal = Principal(CLINIC, identity.user, tenant=connection.tenant, account=identity.account)
    record(
        ledger,
        principal,
        "sign_in",
        detail={"method": "api_key", "account": identity.account, "shard": identity.shard},
    )
    # The key a clinic signs in with is its migration's source: connected too.
    record(ledger, principal, "connect", detail={"as": "source", "account": identity.account})
    return ClinicSignIn(principal, connection)


def connect_source(ledger: Ledger, principal: Principal, key: SecretStr, config: ClientConfig) -> Connection:
    """Verify a source key for ``principal`` and audit ``connect``; a clinic may only connect its own account.

    Raises:
        NotAllowed: a clinic's key of another account, or not an administrator's key.
        AuthError, APIError: Cliniko refused the key or could not be reached.
    """
    connection = _verify(key, config, "source API key")
    if not principal.operator and connection.tenant != principal.tenant:
        record(ledger, principal, "connect_refused", detail={"as": "source"})
        raise NotAllowed(
            "This key belongs to another Cliniko account than the one you signed in with; "
            "sign out and sign in with that account's key."
        )
    _admin(connection, "a migration's source")
    record(
        ledger,
        principal,
        "connect",
        tenant=connection.tenant,
        detail={"as": "source", "account": connection.identity.account},
    )
    return connection


def connect_destination(
    ledger: Ledger, principal: Principal, key: SecretStr, config: ClientConfig, *, tenant: str | None
) -> Connection:
    """Verify a destination key and audit ``connect`` under the source's ``tenant`` (its account in ``detail``)."""
    connection = _verify(key, config, "destination API key")
    record(
        ledger,
        principal,
        "connect",
        tenant=tenant or connection.tenant,
        detail={
            "as": "destination",
            "account": connection.identity.account,
            "account_id": connection.tenant,
            "is_admin": connection.identity.is_admin,
            "is_practitioner": connection.identity.is_practitioner,
        },
    )
    return connection


def connect_cliniko_destination(
    settings: ConsoleSettings,
    principal: Principal,
    source: KeyLease,
    key: SecretStr,
    note_keys: Iterable[SecretStr] = (),
) -> tuple[DestinationCheck, KeyLease | None]:
    """Verify another Cliniko account's key as the destination and run the pre-flight against the leased source.

    Audited as ``connect`` (``as: destination``) and ``preflight``, both under the source's
    tenant. The batches written there then belong to that account too, so its own clinic
    users see them. ``note_keys`` are the destination practitioners' keys that author
    their own notes.

    Returns:
        The pre-flight's :class:`~migrator.console.DestinationCheck` and, only when it passed,
        a lease holding the keys (tenant: the destination's account id) for the run to drop.

    Raises:
        ConfigError: the source's key is no longer held, or a note author's key is not an active
            practitioner's of the destination account.
        AuthError, APIError: Cliniko refused a key or could not be reached.
    """
    source_key = source.key
    if source_key is None:
        raise ConfigError(
            "Enter the clinic's own API key again above first: the pre-flight reads both accounts."
        )
    extra = tuple(note_keys)
    with settings.open_ledger() as ledger:
        connection = connect_destination(
            ledger, principal, key, settings.client_config(), tenant=source.tenant
        )
    check = check_cliniko_destination(settings, source_key, ClinikoKeys(key, extra))
    with settings.open_ledger() as ledger:
        record(
            ledger,
            principal,
            "preflight",
            tenant=source.tenant,
            detail={
                "destination": check.target,
                "ok": check.ok,
                "refusals": len(check.preflight.refusals),
                "note_authors": check.note_authors,
            },
        )
    return check, (KeyLease(key, connection.tenant, extra) if check.ok else None)


def plan_for_tenant(plan: Plan, tenant: str) -> Plan:
    """The plan with its source named by account id (the tenant), as every hosted batch is."""
    return plan.model_copy(update={"source_account": tenant})


# --- batches: seen, stopped, resumed, deleted only by their tenant (or an operator) -------------


def visible_batches(ledger: Ledger, principal: Principal) -> list[Batch]:
    """The batches ``principal`` may see, newest first."""
    return ledger.batches(tenant=principal.scope)


def visible_batch(ledger: Ledger, principal: Principal, batch_id: str) -> Batch:
    """One batch ``principal`` may see; another tenant's raises the same ``BatchNotFound`` as an unknown id."""
    return ledger.batch(batch_id, tenant=principal.scope)


def stop_as(ledger: Ledger, registry: RunRegistry, principal: Principal, batch_id: str) -> RunHandle:
    """Ask a running batch to stop, as ``principal``; audited as ``stop_requested`` (the engine then audits ``stop``).

    Raises:
        BatchNotFound: unknown, or another tenant's.
        ConfigError: the batch is not running in this process.
    """
    batch = visible_batch(ledger, principal, batch_id)
    handle = registry.get(batch.id, tenant=principal.scope)
    if handle is None or not handle.running:
        raise ConfigError(f"Batch {batch.id} is not running in this console, so there is nothing to stop.")
    record(ledger, principal, "stop_requested", batch_id=batch.id, tenant=batch.source_account)
    handle.stop()
    return handle


def resume_as(
    ledger: Ledger,
    registry: RunRegistry,
    principal: Principal,
    batch_id: str,
    lease: KeyLease,
    *,
    workspace: str | Path,
    client_config: ClientConfig,
    expected: Mapping[str, int] | None = None,
    follow_ups: Mapping[str, int] | None = None,
    destination: KeyLease | None = None,
) -> RunHandle:
    """Resume a stopped, failed or interrupted batch as ``principal`` with the leased key of its source account.

    A batch that writes into a Cliniko account needs that account's keys too (``destination``,
    from :func:`connect_cliniko_destination`). Both leases are dropped when the resumed run
    ends. The engine audits ``resume`` with this role.

    Raises:
        BatchNotFound: unknown, or another tenant's.
        ConfigError: a key is dropped or another account's, or the batch cannot be resumed.
    """
    batch = visible_batch(ledger, principal, batch_id)
    key = lease.key
    if key is None:
        raise ConfigError(
            "Enter the source account's API key again on the Connect page to resume this batch."
        )
    keys = None
    if batch.destination.startswith("cliniko:"):
        keys = _leased_keys(destination)
        if keys is None or destination is None or f"cliniko:{destination.tenant}" != batch.destination:
            raise ConfigError(
                f"Batch {batch.id} writes into Cliniko account {batch.destination.removeprefix('cliniko:')}: "
                "connect that account's key as the destination on the Connect page to resume it."
            )
    return registry.resume(
        batch.id,
        key,
        source_account=lease.tenant,
        workspace=workspace,
        client_config=client_config,
        expected=expected,
        follow_ups=follow_ups,
        actor=principal.actor,
        role=principal.role,
        on_end=drop_all(lease, destination),
        destination_keys=keys,
    )


def _leased_keys(lease: KeyLease | None) -> ClinikoKeys | None:
    """A destination lease's keys while it holds them."""
    key = lease.key if lease is not None else None
    return ClinikoKeys(key, lease.extra) if key is not None and lease is not None else None


def deletion_account(batch: Batch) -> str:
    """The account whose administrator may delete ``batch``: where its records were written.

    A Cliniko destination's account; for the local clinic store, the source account whose store it is.
    """
    tenants = batch.tenants
    return tenants[-1]


@contextmanager
def _as_administrator(
    settings: ConsoleSettings,
    principal: Principal,
    batch: Batch,
    admin_key: SecretStr,
    *,
    what: str,
    refused: str,
    client_config: ClientConfig | None,
) -> Iterator[tuple[Ledger, Any]]:
    """The ledger and ``batch``'s destination, once Cliniko says, now, that ``admin_key`` is an administrator's of its account.

    The account is the one ``batch`` wrote into (:func:`deletion_account`); a Cliniko
    destination is opened with ``admin_key`` itself. A refusal is audited as ``refused``
    (never with the key) and raised; what is done inside is audited with this role.
    """
    config = client_config or settings.client_config()
    try:
        connection = _verify(admin_key, config)
        if connection.tenant != deletion_account(batch):
            raise NotAllowed(
                f"This key belongs to another Cliniko account; {what} needs an administrator's key of the "
                "account it was imported into."
            )
        _admin(connection, what)
    except MigratorError as exc:
        with settings.open_ledger() as ledger:
            record(
                ledger,
                principal,
                refused,
                batch_id=batch.id,
                tenant=batch.source_account,
                detail={"why": type(exc).__name__},
            )
        raise
    with settings.open_destination(batch.destination, ClinikoKeys(admin_key), config.url_template) as (
        ledger,
        destination,
    ):
        ledger.audit_role = principal.role
        yield ledger, destination


def delete_as(
    settings: ConsoleSettings,
    principal: Principal,
    batch_id: str,
    admin_key: SecretStr,
    *,
    client_config: ClientConfig | None = None,
    show: Callable[[DeletionPlan], None] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> DeletionPlan:
    """Delete a batch on a hosted instance: ``admin_key`` must be an administrator's of the batch's account.

    The key is checked against Cliniko at this moment (seed 000) and, for a batch that
    wrote into a Cliniko account, also does the deletion there; it is not kept. Refusals
    are audited as ``delete_refused``; the deletion itself as ``delete`` and ``deleted``.
    ``show`` and ``progress`` are :func:`~migrator.batches.delete_batch`'s: called with the
    plan before anything is removed, and after each chunk removed.

    Raises:
        BatchNotFound: unknown, or another tenant's.
        NotAllowed: the key is not an administrator's, or belongs to another account.
        BatchNotDeletable: too old, running or already deleted.
    """
    from migrator.batches import delete_batch

    with settings.open_ledger() as ledger:
        batch = visible_batch(ledger, principal, batch_id)
    with _as_administrator(
        settings,
        principal,
        batch,
        admin_key,
        what=f"deleting batch {batch.id}",
        refused="delete_refused",
        client_config=client_config,
    ) as (ledger, store):
        return delete_batch(ledger, store, batch.id, actor=principal.actor, show=show, progress=progress)


def go_live_as(
    settings: ConsoleSettings,
    principal: Principal,
    batch_id: str,
    admin_key: SecretStr,
    *,
    client_config: ClientConfig | None = None,
) -> GoLiveResult:
    """Go live with a batch that wrote into a Cliniko account: its patients' own reminder preferences come back.

    ``admin_key`` must be an administrator's of that account, checked with Cliniko now
    and used for the go-live's writes only, then dropped. Refusals are audited as
    ``go_live_refused``; the go-live itself as ``go_live``, with this role.

    Raises:
        BatchNotFound: unknown, or another tenant's.
        ConfigError: the batch wrote into the local clinic store (nothing to go live with).
        NotAllowed: the key is not an administrator's of the batch's Cliniko account.
    """
    from migrator.destinations.cliniko import go_live

    with settings.open_ledger() as ledger:
        batch = visible_batch(ledger, principal, batch_id)
    if not batch.destination.startswith("cliniko:"):
        raise ConfigError(f"Batch {batch.id} went into the clinic store: there is nothing to go live with.")
    with _as_administrator(
        settings,
        principal,
        batch,
        admin_key,
        what=f"going live with batch {batch.id}",
        refused="go_live_refused",
        client_config=client_config,
    ) as (ledger, destination):
        return go_live(ledger, destination, batch.id, actor=principal.actor)


@contextmanager
def audited_read(
    settings: ConsoleSettings, principal: Principal, batch: Batch, read: str, *, key: str = "given"
) -> Iterator[None]:
    """Audit a Review read of Cliniko: ``review_read_refused`` if the block raises, else ``review_read``.

    A read is no change, but it is a key's access to a clinic's records, so a hosted
    instance keeps a line of it (tenant: the batch's source account), as of a deletion.
    ``key`` says whose key read, in the line's detail: ``given`` for that read only
    (:func:`source_as`, :func:`count_as`), ``session`` the one the session verified on
    its Connect page.
    """
    try:
        yield
    except MigratorError as exc:
        with settings.open_ledger() as ledger:
            record(
                ledger,
                principal,
                "review_read_refused",
                batch_id=batch.id,
                tenant=batch.source_account,
                detail={"read": read, "key": key, "why": type(exc).__name__},
            )
        raise
    with settings.open_ledger() as ledger:
        record(
            ledger,
            principal,
            "review_read",
            batch_id=batch.id,
            tenant=batch.source_account,
            detail={"read": read, "key": key},
        )


@contextmanager
def source_as(
    settings: ConsoleSettings,
    principal: Principal,
    batch_id: str,
    key: SecretStr,
    *,
    read: str,
    client_config: ClientConfig | None = None,
) -> Iterator[tuple[Batch, ClinikoClient]]:
    """The batch and a client of the account it read from, once Cliniko says ``key`` is that account's.

    For the Review page's reads at the source after the session's key has gone with its
    run (counts, opening balances, balances): any user's key of that account, checked
    now, used inside the ``with`` and not kept. ``read`` names the read for the audit
    trail (``review_read``, or ``review_read_refused`` when the key is refused).

    Raises:
        BatchNotFound: unknown, or another tenant's.
        NotAllowed: the key belongs to another account.
        AuthError, APIError: Cliniko refused the key or could not be reached.
    """
    with settings.open_ledger() as ledger:
        batch = visible_batch(ledger, principal, batch_id)
    config = client_config or settings.client_config()
    with ExitStack() as stack:
        with audited_read(settings, principal, batch, read):
            client = stack.enter_context(ClinikoClient(parse_key(key, name="source API key"), config=config))
            if account_id(client) != batch.source_account:
                raise NotAllowed(
                    f"This key belongs to another Cliniko account; batch {batch.id} read from account "
                    f"{batch.source_account}, so it needs a key of that account."
                )
        yield batch, client


def count_as(
    settings: ConsoleSettings,
    principal: Principal,
    batch_id: str,
    key: SecretStr,
    *,
    client_config: ClientConfig | None = None,
    session_key: bool = False,
) -> pl.DataFrame:
    """A batch's counts (:func:`migrator.reconcile.counts`) with the Cliniko account it wrote into counted now.

    A session's keys go when its run ends, so the Review page asks for one for this
    count, unless the session works on that very account and holds its verified key
    (``session_key``: the clinic the batch wrote into, signed in with its own key).
    ``key`` may be any user's of that account (counting only reads), is checked
    with Cliniko now, used for this count (one request per 100 records of each list
    the batch wrote) and not kept. Audited as ``review_read`` (or ``review_read_refused``),
    with whose key it was (``given`` or ``session``).

    Raises:
        BatchNotFound: unknown, or another tenant's.
        ConfigError: the batch went into the clinic store (count it without a key).
        NotAllowed: the key belongs to another account.
        AuthError, APIError: Cliniko refused the key or could not be reached.
    """
    from migrator.reconcile import counts

    with settings.open_ledger() as ledger:
        batch = visible_batch(ledger, principal, batch_id)
    account = batch.destination.removeprefix("cliniko:")
    if account == batch.destination:
        raise ConfigError(f"Batch {batch.id} went into the clinic store: its counts need no key.")
    config = client_config or settings.client_config()
    with audited_read(
        settings, principal, batch, "destination counts", key="session" if session_key else "given"
    ):
        if _verify(key, config).tenant != account:
            raise NotAllowed(
                f"This key belongs to another Cliniko account; counting what batch {batch.id} brought needs a "
                f"key of account {account}, which it wrote into."
            )
    with settings.open_destination(batch.destination, ClinikoKeys(key), config.url_template) as (
        ledger,
        destination,
    ):
        return counts(ledger, batch.id, store=destination)


# --- the audit trail -----------------------------------------------------------------------


def account_names(ledger: Ledger, *, tenant: str | None = None) -> dict[str, str]:
    """The clinics' names by account id, as Cliniko gave them when a key of the account was last verified.

    Tenants are account ids, which are what binds a batch to its clinic; people know a clinic
    by its name. Names come from the audit trail's ``sign_in`` and ``connect`` lines (a
    destination's from its ``account_id``), the newest winning, so a renamed clinic shows its
    new name; with ``tenant``, only from the lines that tenant may read.
    """
    names: dict[str, str] = {}
    for entry in ledger.audit_log(tenant=tenant):  # oldest first: the newest name wins
        detail = entry["detail"] if isinstance(entry["detail"], dict) else {}
        name = detail.get("account")
        if entry["action"] not in ("sign_in", "connect") or not isinstance(name, str) or not name:
            continue
        account = detail.get("account_id") if detail.get("as") == "destination" else entry["tenant"]
        if account:
            names[str(account)] = name
    return names


def account_label(account: str, names: Mapping[str, str]) -> str:
    """An account as a sentence names it: ``"Bondi Physio (account 40117)"``, or ``"account 40117"`` unnamed.

    >>> account_label("40117", {"40117": "Bondi Physio"}), account_label("90233", {})
    ('Bondi Physio (account 40117)', 'account 90233')
    """
    name = names.get(account)
    return f"{name} (account {account})" if name else f"account {account}"


def audit_frame(ledger: Ledger, principal: Principal) -> pl.DataFrame:
    """The audit trail ``principal`` may read, newest first: every line for an operator, a clinic's own for a clinic.

    Columns: at, action, role, tenant (the account id), account (its name, :func:`account_names`),
    actor, batch_id, detail (JSON text).
    """
    import json

    names = account_names(ledger, tenant=principal.scope)
    rows = [
        {
            "at": entry["at"],
            "action": entry["action"],
            "role": entry["role"],
            "tenant": entry["tenant"],
            "account": names.get(entry["tenant"]) if entry["tenant"] else None,
            "actor": entry["actor"],
            "batch_id": entry["batch_id"],
            "detail": json.dumps(entry["detail"], sort_keys=True),
        }
        for entry in reversed(ledger.audit_log(tenant=principal.scope))
    ]
    columns = ("at", "action", "role", "tenant", "account", "actor", "batch_id", "detail")
    return pl.DataFrame(rows, schema=dict.fromkeys(columns, pl.String), orient="row")


# --- python -m migrator.hosted hash-password NAME ---------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m migrator.hosted hash-password NAME``: prompt for a password, print its secrets entry."""
    parser = argparse.ArgumentParser(prog="python -m migrator.hosted", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    hashing = commands.add_parser(
        "hash-password",
        help="print an operator's [migrator.operators.NAME] entry for .streamlit/secrets.toml",
    )
    hashing.add_argument("name", help="the operator's sign-in name (letters, digits, '.', '_', '-')")
    args = parser.parse_args(argv)
    name = args.name.strip()
    if not name or not all(c.isalnum() or c in "._-" for c in name):
        print("The name may hold letters, digits, '.', '_' and '-' only.", file=sys.stderr)
        return 2
    # Read from the terminal (or stdin when piped), never from a flag: a flag lands in the shell's history.
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("The two passwords differ.", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")
    try:
        hashed = hash_password(password)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f'[migrator.operators."{name}"]\npassword_hash = "{hashed}"')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
