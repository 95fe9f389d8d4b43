"""Connect: the source key (or the demo clinic), verified, and the destination choice."""

from __future__ import annotations

import streamlit as st
from pydantic import SecretStr

from migrator.cliniko.client import ClientConfig, ClinikoClient, Identity
from migrator.cliniko.keys import parse_key
from migrator.errors import ConfigError, MigratorError


@st.cache_resource(show_spinner="Starting the demo clinic…")
def demo_clinic():  # -> Sandbox, imported lazily so the page loads fast
    """The built-in demo sandbox, started once per console process and shared by its sessions."""
    from migrator.sandbox import Sandbox

    sandbox = Sandbox(size="demo", seed=1)
    sandbox.start()
    return sandbox


def verify(key: SecretStr, url_template: str | None) -> Identity:
    with ClinikoClient(key, config=ClientConfig(url_template=url_template)) as client:
        return client.identity()


def show_shard(raw: str) -> None:
    """The shard and region, read from the key as it is typed: no request needed."""
    if not raw:
        return
    try:
        key = parse_key(raw)
    except ConfigError as exc:
        st.error(str(exc))
        return
    st.caption(f"Shard **{key.shard}** · {key.region}")


def show_identity(identity: Identity, *, needs_practitioner: bool) -> None:
    st.success(
        f"Connected to **{identity.account or 'the account'}** on {identity.shard} as **{identity.user}**."
    )
    cols = st.columns(3)
    cols[0].metric("Administrator", "yes" if identity.is_admin else "no")
    cols[1].metric("Active practitioner", "yes" if identity.is_practitioner else "no")
    cols[2].metric("Shard", identity.shard)
    if not identity.is_admin:
        st.warning(
            "This key's user is not an administrator: Cliniko gives such keys too few rights for a migration."
        )
    if needs_practitioner and not identity.is_practitioner:
        st.warning(
            "A destination key must belong to an administrator who is also an active practitioner: "
            "Cliniko makes that practitioner the author of every note the transfer writes."
        )


st.title("Move a clinic's data out of Cliniko")
st.markdown(
    "This console copies a clinic's patients, appointments, notes, files and invoices out of a Cliniko "
    "account, **reading only**: nothing in Cliniko is changed and no patient is messaged. "
    "Paste the source account's API key below, or try everything first on the **demo clinic**, "
    "a built-in practice simulator that needs no key."
)

state = st.session_state
state.setdefault("url_template", None)

if st.button("Use the demo clinic", key="use_demo", type="primary", icon=":material/science:"):
    try:
        sandbox = demo_clinic()
        state.url_template = sandbox.url_template
        state.source_key = SecretStr(sandbox.key("source"))
        state.dest_key = SecretStr(sandbox.key("destination"))
        state.source_identity = verify(state.source_key, state.url_template)
        state.demo = True
    except MigratorError as exc:
        st.error(str(exc))

st.subheader("Source account")
if state.get("demo"):
    st.info("Using the demo clinic: its keys are filled in for you and never leave this session.")
typed = st.text_input(
    "Source API key",
    type="password",
    key="source_key_input",
    placeholder="demo clinic key in use"
    if state.get("demo")
    else "paste the key from Cliniko › My info › Manage API keys",
    help="Kept in this browser session's memory only, never saved. The shard is read from its suffix (-au1, -uk1…).",
)
show_shard(typed)
if st.button("Verify the key", key="verify_source", disabled=not typed):
    try:
        state.source_key = SecretStr(typed.strip())
        state.url_template = None
        state.demo = False
        state.source_identity = verify(state.source_key, state.url_template)
    except MigratorError as exc:
        state.pop("source_identity", None)
        st.error(str(exc))

if state.get("source_identity") is not None:
    show_identity(state.source_identity, needs_practitioner=False)

st.subheader("Destination")
destination = st.radio(
    "Where should the data go?",
    ["The local clinic store (on this computer)", "Another Cliniko account"],
    key="destination_choice",
    help="The local clinic store keeps everything the API exposes, invoices and balances included.",
)
if destination == "Another Cliniko account":
    typed_dest = st.text_input("Destination API key", type="password", key="dest_key_input")
    show_shard(typed_dest)
    if st.button(
        "Verify the destination key", key="verify_dest", disabled=not (typed_dest or state.get("demo"))
    ):
        try:
            key = SecretStr(typed_dest.strip()) if typed_dest else state.dest_key
            state.dest_identity = verify(key, state.url_template)
            state.dest_key = key
        except MigratorError as exc:
            state.pop("dest_identity", None)
            st.error(str(exc))
    if state.get("dest_identity") is not None:
        show_identity(state.dest_identity, needs_practitioner=True)

if state.get("source_identity") is not None and st.button("Disconnect", key="disconnect"):
    for name in ("source_key", "dest_key", "source_identity", "dest_identity", "demo", "url_template"):
        state.pop(name, None)
    st.rerun()
