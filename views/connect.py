"""Connect: the source key (or the demo clinic), verified, and the destination choice."""

from __future__ import annotations

import streamlit as st
from pydantic import SecretStr

from console_ui import (
    CHECKING_DESTINATION,
    CHECKING_KEY,
    background_runs_sentence,
    connected,
    drop_connection,
    forget_typed_keys,
    next_step,
    note_author_keys,
    remembered,
    settings,
    show_check,
    show_identity,
    source_key,
    take_typed_key,
)
from migrator.cliniko.client import Identity
from migrator.cliniko.keys import parse_key
from migrator.console import (
    ClinikoKeys,
    check_cliniko_destination,
    demo_size_from_env,
    masked,
    setup_store_from,
)
from migrator.errors import ConfigError, MigratorError


@st.cache_resource(show_spinner="Starting the demo clinic…")
def _demo_clinic(rate_limit: int, size: str | int):  # -> Sandbox, imported lazily so the page loads fast
    from migrator.sandbox import Sandbox

    sandbox = Sandbox(size=size, seed=1, rate_limit=rate_limit)
    sandbox.start()
    return sandbox


def demo_clinic(rate_limit: int):  # -> Sandbox
    """The built-in demo sandbox, started once per console process (pace and size) and shared by its sessions."""
    return _demo_clinic(rate_limit, demo_size_from_env())


def verify(key: SecretStr, url_template: str | None, *, name: str = "source API key") -> Identity:
    """Whose key it is; Cliniko's refusal names it as ``name`` (the page holds two keys)."""
    with settings().client(key, url_template, name=name) as client:
        return client.identity()


def set_up_store_from(key: SecretStr, url_template: str | None) -> dict[str, int]:
    """Give the local store the destination account's own practitioners, businesses and appointment types."""
    with settings().client(key, url_template, name="destination API key") as client:
        return setup_store_from(settings(), client)


def show_shard(raw: str) -> bool:
    """The shard and region, read from the key as it is typed (no request); whether it is a key at all.

    A malformed key is said here, once: the button that would verify it stays disabled.
    """
    if not raw:
        return False
    try:
        key = parse_key(raw)
    except ConfigError as exc:
        st.error(str(exc))
        return False
    st.caption(f"Shard **{key.shard}** · {key.region}")
    return True


def show_setup(added: dict[str, int] | None, account: str) -> None:
    if added is None:
        return
    if any(added.values()):
        what = ", ".join(f"{n} {entity.replace('_', ' ')}" for entity, n in added.items() if n)
        st.caption(
            f"The local clinic store now holds {account}'s own {what}, as a clinic sets itself up "
            "before an import: the mapping matches against them."
        )
    else:
        st.caption(
            "The local clinic store already holds its practitioners, businesses and appointment types."
        )


state = st.session_state


def check_destination(key: SecretStr, note_keys: list[SecretStr]) -> None:
    """Verify a destination key (and note authors' keys) and run the pre-flight; keep them only if it passes."""
    source = source_key()
    if source is None or state.get("source_identity") is None:
        raise ConfigError("Connect the source account first: the pre-flight checks both accounts.")
    with st.spinner(CHECKING_DESTINATION):
        state.dest_identity = verify(key, state.url_template, name="destination API key")
        check = check_cliniko_destination(
            settings(), source, ClinikoKeys(key, tuple(note_keys)), state.url_template
        )
    state.dest_check = check
    if check.ok:
        state.dest_key, state.note_keys, state.dest_target = key, note_keys, check.target
        state.pop("dest_references", None)
    else:
        state.pop("dest_target", None)


def clear_key_boxes() -> None:
    """Empty the key boxes (a callback): a key leaves the page once it is taken, or the connection goes."""
    for box in ("source_key_input", "dest_key_input", "note_key_input"):
        state[box] = ""
    forget_typed_keys()


def use_demo() -> None:
    """Connect the demo clinic (a callback); whatever was typed into a key box goes."""
    clear_key_boxes()
    try:
        sandbox = demo_clinic(int(settings().requests_per_minute))
        drop_connection()
        state.url_template = sandbox.url_template
        state.source_key = SecretStr(sandbox.key("source"))
        state.dest_key = SecretStr(sandbox.key("destination"))
        state.source_identity = verify(state.source_key, state.url_template)
        state.demo = True
        state.store_setup = set_up_store_from(state.dest_key, state.url_template)
    except MigratorError as exc:
        state.demo_error = str(exc)


def verify_typed_source() -> None:
    """Verify the typed source key (a callback: the box is emptied, whatever the answer)."""
    key = take_typed_key("source_key_input")
    if key is None:
        state.source_error = "Enter the source account's API key to verify it."
        return
    try:
        with st.spinner(CHECKING_KEY):
            identity = verify(key, None)
    except MigratorError as exc:
        drop_connection()
        state.source_error = str(exc)
        return
    drop_connection()
    state.source_key, state.source_identity, state.demo = key, identity, False


def verify_typed_destination() -> None:
    """Verify the typed destination key (or the demo's) and run the pre-flight (a callback: the box is emptied)."""
    typed = take_typed_key("dest_key_input")
    try:
        key = typed or SecretStr(demo_clinic(int(settings().requests_per_minute)).key("destination"))
        check_destination(key, [])
    except MigratorError as exc:
        for name in ("dest_identity", "dest_check", "dest_target"):
            state.pop(name, None)
        state.dest_error = str(exc)


def disconnect() -> None:
    """Forget the keys, what was read with them and what was typed (a callback)."""
    clear_key_boxes()
    drop_connection()


def add_note_key() -> None:
    """Check one more practitioner's key with the destination's (a callback: it empties the box)."""
    typed = take_typed_key("note_key_input")
    if typed is None:
        state.note_key_error = "Enter a practitioner's API key of the destination account to add it."
        return
    if not isinstance(state.get("dest_key"), SecretStr):
        return
    try:
        check_destination(state.dest_key, [*(state.get("note_keys") or []), typed])
    except MigratorError as exc:
        state.note_key_error = str(exc)


def forget_note_keys() -> None:
    state.note_keys = []


st.title("Move a clinic's data out of Cliniko")
st.markdown(
    "This console copies a clinic's patients, appointments, notes, files and invoices out of a Cliniko "
    "account, **reading only**: nothing in Cliniko is changed and no patient is messaged. "
    "Paste the source account's API key below, or try everything first on the **demo clinic**, "
    "a built-in practice simulator that needs no key."
)
with st.expander(
    "How it works: seven steps, one page each", expanded=not st.session_state.get("source_identity")
):
    st.markdown(
        "1. **Connect** the source account (or press *Use the demo clinic*).\n"
        "2. **Preview** what will be read and how long that takes.\n"
        "3. **Mapping**: say what each practitioner, business and appointment type becomes.\n"
        "4. **Scope**: all data, or only some businesses or practitioners; tick the data types.\n"
        "5. **Run** it in the background; leave the page if you like, it keeps going.\n"
        "6. **Review** skipped records, counts and patient balances; download them.\n"
        "7. **Batches**: every run is a batch you can delete within 48 hours.\n\n"
        "Each page ends with a button to the next one."
    )

state.setdefault("url_template", None)

if not connected() and (running := background_runs_sentence()):
    st.info(
        f"{running} It does not need this page. Keys live only in the memory of the browser session "
        "that typed them, so a reloaded page or a new tab starts unconnected: connect again to start, "
        "resume or top up a run."
    )

st.button("Use the demo clinic", key="use_demo", type="primary", icon=":material/science:", on_click=use_demo)
if error := state.pop("demo_error", None):
    st.error(error)

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
well_formed = show_shard(typed)
st.button("Verify the key", key="verify_source", disabled=not well_formed, on_click=verify_typed_source)
if error := state.pop("source_error", None):
    st.error(error)

if state.get("source_identity") is not None:
    show_identity(state.source_identity, needs_practitioner=False)
    st.caption(f"Key in use: {masked(parse_key(state.source_key))}, held in this session's memory only.")

st.subheader("Destination")
destination = remembered(
    st.radio,
    key="destination_choice",
    default="The local clinic store (on this computer)",
    label="Where should the data go?",
    options=["The local clinic store (on this computer)", "Another Cliniko account"],
    help="The local clinic store keeps everything the API exposes, invoices and balances included.",
)
if destination == "Another Cliniko account":
    st.caption(
        "The data is written into that account through Cliniko's API. The key must belong to an administrator "
        "who is also an active practitioner: Cliniko makes that practitioner the author of every note."
    )
    typed_dest = st.text_input(
        "Destination API key",
        type="password",
        key="dest_key_input",
        placeholder="leave empty to use the demo destination account"
        if state.get("demo")
        else "the destination account's key",
        help="Kept in this browser session's memory only, never saved.",
    )
    dest_well_formed = show_shard(typed_dest)
    st.button(
        "Use the demo destination account"
        if state.get("demo") and not typed_dest
        else "Verify the destination key and run the pre-flight",
        key="verify_dest",
        disabled=not (dest_well_formed or (state.get("demo") and not typed_dest)),
        on_click=verify_typed_destination,
    )
    if error := state.pop("dest_error", None):
        st.error(error)
    if state.get("dest_identity") is not None:
        show_identity(state.dest_identity, needs_practitioner=True)
    if state.get("dest_check") is not None:
        show_check(state.dest_check)
    if state.get("dest_target"):
        note_author_keys(
            len(state.get("note_keys") or []),
            add=add_note_key,
            forget=forget_note_keys,
            kept="in this session's memory only",
        )
else:
    state.pop("dest_target", None)
    st.caption(f"Runs go into the local clinic store at `{settings().store_target.removeprefix('sqlite:')}`.")
    if state.get("demo"):
        show_setup(state.get("store_setup"), "the demo destination clinic")

if state.get("source_identity") is not None:
    left, right = st.columns([1, 1])
    with left:
        next_step("Next: preview what will be read", "preview", key="next_preview")
    with right:
        st.button("Disconnect", key="disconnect", icon=":material/logout:", on_click=disconnect)
