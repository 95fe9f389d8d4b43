"""Connect on a hosted instance: the signed-in clinic's own account (or, for an operator, a clinic's key).

Before anyone signs in, this page is the sign-in form (:func:`hosted_ui.sign_in_form`). The
source key lives in a :class:`~migrator.hosted.KeyLease` only until the run it is lent to
ends. A Cliniko destination's keys (after a passed pre-flight) live in a lease of their own,
dropped with the source's; a key used only to set the clinic store up is dropped at once.
A key refused is answered in one sentence under the box it was typed in.
"""

from __future__ import annotations

import streamlit as st
from pydantic import SecretStr

from console_ui import (
    CHECKING_DESTINATION,
    CHECKING_KEY,
    destination_lease,
    drop_connection,
    next_step,
    note_author_keys,
    principal,
    remembered,
    settings,
    show_check,
    show_identity,
    sign_out_now,
    source_key,
    take_typed_key,
    work_tenant,
)
from hosted_ui import sign_in_form
from migrator.cliniko.keys import parse_key
from migrator.console import masked, setup_store_from
from migrator.errors import MigratorError
from migrator.hosted import KeyLease, connect_cliniko_destination, connect_destination, connect_source

STORE = "The clinic store on this instance"
CLINIKO = "Another Cliniko account"

state = st.session_state
who = principal()
if who is None:
    sign_in_form()
    st.stop()


def verify_source() -> None:
    """Verify the typed source key for this session (a callback: the box is emptied first)."""
    key = take_typed_key("source_key_input")
    if key is None or who is None:
        state.source_error = "Enter the clinic's API key to verify it."
        return
    config = settings()
    try:
        with st.spinner(CHECKING_KEY), config.open_ledger() as ledger:
            connection = connect_source(ledger, who, key, config.client_config())
    except MigratorError as exc:
        state.source_error = str(exc)
        return
    if who.operator and connection.tenant != work_tenant():
        drop_connection()  # another clinic: nothing read with the last key may carry over
    old = state.get("key_lease")
    if isinstance(old, KeyLease):
        old.drop()
    state.key_lease = KeyLease(key, connection.tenant)
    state.connection_tenant = connection.tenant
    state.source_identity = connection.identity


def set_up_store() -> None:
    """Set the clinic store up with an account's practitioners, businesses and appointment types; the key is not kept.

    Any user's key of that account will do, not only an administrator's: it only reads those
    three lists and writes nothing to Cliniko. A user whose role may not read them gets
    Cliniko's refusal (403), said in one sentence.
    """
    key = take_typed_key("setup_key_input")
    if key is None or who is None:
        state.setup_error = "Enter an API key of the account to set the clinic store up from."
        return
    config = settings()
    try:
        with st.spinner("Reading the account's practitioners, businesses and appointment types…"):
            with config.open_ledger() as ledger:
                connection = connect_destination(
                    ledger, who, key, config.client_config(), tenant=work_tenant()
                )
            state.setup_identity = connection.identity
            with config.client(key) as client:
                state.store_setup = setup_store_from(config, client)
    except MigratorError as exc:
        state.pop("setup_identity", None)
        state.setup_error = str(exc)


def check_destination(key: SecretStr, note_keys: list[SecretStr], *, error_key: str = "dest_error") -> None:
    """Verify a Cliniko destination's keys and run the pre-flight; lease them only if it passes.

    A refusal is kept in ``state[error_key]``, for the box whose key it was to show.
    """
    source = state.get("key_lease")
    if who is None or not isinstance(source, KeyLease):
        state[error_key] = "Verify the clinic's own API key above first: the pre-flight reads both accounts."
        return
    try:
        with st.spinner(CHECKING_DESTINATION):
            check, lease = connect_cliniko_destination(settings(), who, source, key, note_keys)
    except MigratorError as exc:
        state[error_key] = str(exc)
        return
    forget_destination()
    state.dest_check = check
    if lease is not None:
        state.dest_lease, state.dest_target = lease, check.target


def verify_cliniko_destination() -> None:
    """The destination key box's callback: it is emptied before anything else."""
    key = take_typed_key("dest_key_input")
    if key is None:
        state.dest_error = "Enter an API key of the destination account to verify it."
        return
    check_destination(key, [])


def add_note_key() -> None:
    """Check one more destination practitioner's key with the destination's (a callback: it empties the box)."""
    typed = take_typed_key("note_key_input")
    lease = destination_lease()
    key = lease.key if lease is not None else None
    if typed is None:
        state.note_key_error = "Enter a practitioner's API key of the destination account to add it."
    elif lease is not None and key is not None:
        check_destination(key, [*lease.extra, typed], error_key="note_key_error")


def forget_note_keys() -> None:
    lease = destination_lease()
    key = lease.key if lease is not None else None
    if lease is not None and key is not None:
        check_destination(key, [], error_key="note_key_error")


def forget_destination() -> None:
    """Drop the Cliniko destination's keys and what was checked with them."""
    lease = state.get("dest_lease")
    if isinstance(lease, KeyLease):
        lease.drop()
    for name in ("dest_lease", "dest_target", "dest_check", "dest_references"):
        state.pop(name, None)


st.title("Connect")

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
if error := state.pop("source_error", None):  # under the box its key was typed in
    st.error(error)

st.subheader("Destination")
destination = remembered(
    st.radio,
    key="destination_choice",
    default=STORE,
    label="Where should the data go?",
    options=[STORE, CLINIKO],
    help="Each clinic has a clinic store of its own here; no other clinic can read it. Another Cliniko "
    "account is written through Cliniko's API.",
)
if destination == CLINIKO:
    st.caption(
        "The data is written into that account through Cliniko's API. The key must belong to an administrator "
        "who is also an active practitioner: Cliniko makes that practitioner the author of every note. Batches "
        "written there belong to that account too: its own users see them here."
    )
    lease = destination_lease()
    if lease is None:
        st.text_input(
            "Destination API key",
            type="password",
            key="dest_key_input",
            help="Kept in this session's memory only until the run that needs it ends, never saved.",
        )
        st.button(
            "Verify the destination key and run the pre-flight",
            key="verify_dest",
            on_click=verify_cliniko_destination,
            disabled=key is None,
            help=None if key is not None else "Verify the clinic's own key first: the pre-flight reads both.",
        )
        if error := state.pop("dest_error", None):
            st.error(error)
        if state.get("dest_target"):  # a pre-flight passed, and its run has ended since
            st.info(
                "The destination's key was dropped when the last run ended: enter it again to run into it."
            )
    check = state.get("dest_check")
    if check is not None:
        show_identity(check.preflight.destination, needs_practitioner=True)
        show_check(check)
    if lease is not None:
        note_author_keys(
            len(lease.extra), add=add_note_key, forget=forget_note_keys, kept="until the run ends"
        )
        st.button("Use the clinic store instead", key="forget_dest", on_click=forget_destination)
else:
    if destination_lease() is not None or state.get("dest_target"):
        forget_destination()  # a key not needed any more is not held
    if work_tenant() is not None:
        st.caption("Runs go into this clinic's own store on this instance.")
    setup_error = state.pop("setup_error", None)
    with st.expander(
        "Set the clinic store up from the account you will work in (optional)", expanded=bool(setup_error)
    ):
        st.markdown(
            "A new clinic sets up its practitioners, businesses and appointment types before an import. "
            "Give a key of the account whose set-up you want, and the mapping matches against it."
        )
        st.text_input("That account's API key", type="password", key="setup_key_input")
        st.button("Set the clinic store up", key="set_up_store", on_click=set_up_store)
        if setup_error:
            st.error(setup_error)
        if state.get("setup_identity") is not None:
            identity = state.setup_identity
            st.success(
                f"The clinic store is set up from **{identity.account or 'the account'}**; the key was used "
                "once and is not kept."
            )

if key is not None and state.get("source_identity") is not None:
    left, right = st.columns([1, 1])
    with left:
        next_step("Next: preview what will be read", "preview", key="next_preview")
    with right:
        if st.button("Disconnect", key="disconnect", icon=":material/link_off:"):
            drop_connection()
            st.rerun()
st.button("Sign out", key="sign_out_here", icon=":material/logout:", on_click=sign_out_now)
