"""What a hosted console shows before sign-in (``MIGRATOR_MODE=hosted``): UI only, the checks are in migrator.hosted.

A clinic signs in with its Cliniko API key; support staff with the identity provider (``st.login``)
or a name and password from ``.streamlit/secrets.toml``. Every box that held a secret is emptied
by the callback that reads it.
"""

from __future__ import annotations

import streamlit as st

from console_ui import (
    forget_typed_keys,
    oidc_configured,
    operator_directory,
    settings,
    sign_in_throttle,
    take_typed_key,
)
from migrator.errors import MigratorError
from migrator.hosted import KeyLease, sign_in_clinic, sign_in_operator


def browser_address() -> str | None:
    """The address the browser's connection comes from, as the server sees it (``None`` if it cannot say)."""
    address = st.context.ip_address
    return address if isinstance(address, str) and address else None


def clinic_sign_in() -> None:
    """Verify the typed key and bind the session to its account (a callback: the box is emptied first)."""
    key = take_typed_key("sign_in_key")
    if key is None:
        st.session_state.sign_in_error = "Enter an administrator's Cliniko API key of your clinic to sign in."
        return
    config = settings()
    try:
        with config.open_ledger() as ledger:
            signed = sign_in_clinic(ledger, key, config.client_config())
    except MigratorError as exc:
        st.session_state.sign_in_error = str(exc)
        return
    st.session_state.principal = signed.principal
    st.session_state.source_identity = signed.connection.identity
    st.session_state.key_lease = KeyLease(key, signed.connection.tenant)


def operator_sign_in() -> None:
    """Check an operator's name and password against the secrets file (a callback)."""
    name = str(st.session_state.get("operator_name") or "")
    password = str(st.session_state.get("operator_password") or "")
    st.session_state.operator_password = ""
    forget_typed_keys()
    try:
        directory = operator_directory()
        with settings().open_ledger() as ledger:
            st.session_state.principal = sign_in_operator(
                ledger, directory, name, password, throttle=sign_in_throttle(), origin=browser_address()
            )
    except MigratorError as exc:
        st.session_state.sign_in_error = str(exc)


def sign_in_form() -> None:
    """The sign-in page: what a hosted console shows until someone signs in."""
    st.title("Sign in")
    st.markdown(
        "This hosted console copies a clinic's data out of Cliniko, **reading only**. A clinic signs in with an "
        "administrator's **Cliniko API key**: it is checked with Cliniko, and you then see only your own clinic's "
        "migrations. The key is kept in this session's memory only while a step needs it, never saved."
    )
    if error := st.session_state.pop("sign_in_error", None):
        st.error(error)

    st.subheader("Clinic")
    st.text_input(
        "Your Cliniko API key",
        type="password",
        key="sign_in_key",
        placeholder="Cliniko › My info › Manage API keys",
        help="An administrator's key. Its suffix (-au1, -uk1…) says which Cliniko shard your account lives on.",
    )
    st.button("Sign in with the key", key="sign_in_clinic", type="primary", on_click=clinic_sign_in)

    st.subheader("Support staff")
    try:
        directory = operator_directory()
    except MigratorError as exc:
        st.error(str(exc))
        st.stop()
    if oidc_configured() and st.button(
        "Sign in with the identity provider", key="sign_in_oidc", icon=":material/badge:"
    ):
        st.login(directory.oidc_provider) if directory.oidc_provider else st.login()
    if (
        oidc_configured()
        and st.user.is_logged_in
        and st.button("Sign out of the identity provider", key="sign_out_oidc", icon=":material/logout:")
    ):
        st.logout()  # the provider's account was refused (app.py): leave it, or sign in with another above
    if directory.has_passwords:
        st.text_input("Operator name", key="operator_name")
        st.text_input("Password", type="password", key="operator_password")
        st.button("Sign in as an operator", key="sign_in_operator", on_click=operator_sign_in)
    if not oidc_configured() and not directory.has_passwords:
        st.caption(
            "No operator sign-in is configured on this instance (see the README's Hosting section: "
            "`[auth]` for an identity provider, or `[migrator.operators.NAME]` password hashes in "
            "`.streamlit/secrets.toml`)."
        )
