"""Connect on a hosted instance: the signed-in clinic's own account (or, for an operator, a clinic's key).

Before anyone signs in, this page is the sign-in form (:func:`hosted_ui.sign_in_form`). The
source key lives in a :class:`~migrator.hosted.KeyLease` only until the run it is lent to
ends; the destination key is used to set the clinic store up and dropped at once.
"""

from __future__ import annotations

import streamlit as st
from pydantic import SecretStr

from console_ui import (
    drop_connection,
    forget_typed_keys,
    next_step,
    principal,
    remembered,
    settings,
    sign_out_now,
    source_key,
    work_tenant,
)
from hosted_ui import sign_in_form
from migrator.cliniko.client import Identity
from migrator.cliniko.keys import parse_key
from migrator.console import masked, setup_store_from
from migrator.errors import MigratorError
from migrator.hosted import KeyLease, connect_destination, connect_source

state = st.session_state
who = principal()
if who is None:
    sign_in_form()
    st.stop()


def verify_source() -> None:
    """Verify the typed source key for this session (a callback: the box is emptied first)."""
    typed = str(state.get("source_key_input") or "").strip()
    state.source_key_input = ""
    forget_typed_keys()
    if not typed or who is None:
        return
    key = SecretStr(typed)
    config = settings()
    try:
        with config.open_ledger() as ledger:
            connection = connect_source(ledger, who, key, config.client_config())
    except MigratorError as exc:
        state.connect_error = str(exc)
        return
    if who.operator and connection.tenant != work_tenant():
        drop_connection()  # another clinic: nothing read with the last key may carry over
    old = state.get("key_lease")
    if isinstance(old, KeyLease):
        old.drop()
    state.key_lease = KeyLease(key, connection.tenant)
    state.connection_tenant = connection.tenant
    state.source_identity = connection.identity


def verify_destination() -> None:
    """Verify a destination key and set the clinic store up with its account's records; the key is not kept."""
    typed = str(state.get("dest_key_input") or "").strip()
    state.dest_key_input = ""
    forget_typed_keys()
    if not typed or who is None:
        return
    key = SecretStr(typed)
    config = settings()
    try:
        with config.open_ledger() as ledger:
            connection = connect_destination(ledger, who, key, config.client_config(), tenant=work_tenant())
        state.dest_identity = connection.identity
        if connection.identity.is_admin and connection.identity.is_practitioner:
            with config.client(key) as client:
                state.store_setup = setup_store_from(config, client)
    except MigratorError as exc:
        state.pop("dest_identity", None)
        state.connect_error = str(exc)


def show_identity(identity: Identity, *, needs_practitioner: bool) -> None:
    st.success(
        f"Connected to **{identity.account or 'the account'}** on {identity.shard} as **{identity.user}**."
    )
    cols = st.columns(3)
    cols[0].metric("Administrator", "yes" if identity.is_admin else "no")
    cols[1].metric("Active practitioner", "yes" if identity.is_practitioner else "no")
    cols[2].metric("Shard", identity.shard)
    if needs_practitioner and not (identity.is_admin and identity.is_practitioner):
        st.warning(
            "A destination key must belong to an administrator who is also an active practitioner: "
            "Cliniko makes that practitioner the author of every note the transfer writes."
        )


st.title("Connect")
if error := state.pop("connect_error", None):
    st.error(error)

st.subheader("Source account")
if who.operator:
    st.markdown(
        "Paste the API key of the clinic you are migrating for: its account becomes the one this session "
        "works on, with that clinic's own clinic store."
    )
else:
    st.markdown(f"Your account: **{who.account or who.tenant}**. Migrations read from it only.")
key = source_key()
if key is not None and state.get("source_identity") is not None:
    show_identity(state.source_identity, needs_practitioner=False)
    st.caption(f"Key in use: {masked(parse_key(key))}, held in this session's memory until the run ends.")
else:
    if not who.operator:
        st.info(
            "This session holds no key now (it is dropped when a run ends). Enter it again to preview, map or run."
        )
    st.text_input(
        "Source API key" if who.operator else "Your Cliniko API key",
        type="password",
        key="source_key_input",
        help="Kept in this session's memory only while a step needs it, never saved.",
    )
    st.button("Verify the key", key="verify_source", on_click=verify_source)

st.subheader("Destination")
destination = remembered(
    st.radio,
    key="destination_choice",
    default="The clinic store on this instance",
    label="Where should the data go?",
    options=["The clinic store on this instance", "Another Cliniko account"],
    help="Each clinic has a clinic store of its own here; no other clinic can read it.",
)
if destination == "Another Cliniko account":
    st.text_input("Destination API key", type="password", key="dest_key_input")
    st.button("Verify the destination key", key="verify_dest", on_click=verify_destination)
    if state.get("dest_identity") is not None:
        show_identity(state.dest_identity, needs_practitioner=True)
        st.info(
            "Runs go into this clinic's store on this instance, set up with that account's practitioners, "
            "businesses and appointment types so that the mapping matches them. The key was used once and "
            "is not kept."
        )
elif work_tenant() is not None:
    st.caption("Runs go into this clinic's own store on this instance.")

if key is not None and state.get("source_identity") is not None:
    left, right = st.columns([1, 1])
    with left:
        next_step("Next: preview what will be read", "preview", key="next_preview")
    with right:
        if st.button("Disconnect", key="disconnect", icon=":material/link_off:"):
            drop_connection()
            st.rerun()
st.button("Sign out", key="sign_out_here", icon=":material/logout:", on_click=sign_out_now)
