"""The operator console: navigation and the shared frame only; each step is a page in ``views/``.

Not ``pages/``: Streamlit serves a ``pages/`` folder's scripts as pages of their own, so an
address such as ``/batches`` (a bookmark, a refresh) would run that script without this file:
no frame, no sign-in gate.

With ``MIGRATOR_MODE=hosted`` nobody sees a step before signing in (``hosted_ui.sign_in_form``,
on the Connect page's address): a clinic with its API key, an operator with the identity
provider (``st.login``) or a password.
"""

from __future__ import annotations

import contextlib
import logging

import streamlit as st

import console_ui
from migrator.cliniko.keys import parse_key
from migrator.console import ConsoleSettings, masked
from migrator.errors import MigratorError
from migrator.hosted import oidc_operator

st.set_page_config(page_title="Cliniko migrator", page_icon=":material/move_up:", layout="wide")


def oidc_principal() -> None:
    """An operator back from the identity provider (``st.login``) becomes this session's principal.

    Someone the provider vouches for who is not an operator is refused once per session, and the
    sign-in form says why (and offers to sign out of the provider). Not ``st.logout()`` here: it
    leaves for the provider at once, and the new session that comes back has lost the sentence.
    """
    if "principal" in st.session_state or not console_ui.oidc_configured():
        return
    user = dict(st.user.to_dict())
    if not user.get("is_logged_in"):
        return
    email = str(user.get("email") or "")
    if st.session_state.get("oidc_refused") == email:
        return
    try:
        with console_ui.settings().open_ledger() as ledger:
            st.session_state.principal = oidc_operator(
                ledger,
                console_ui.operator_directory(),
                email=email,
                email_verified=user.get("email_verified")
                if isinstance(user.get("email_verified"), bool)
                else None,
            )
    except MigratorError as exc:
        st.session_state.sign_in_error = str(exc)
        st.session_state.oidc_refused = email


hosted = console_ui.hosted()
if st.session_state.pop("forget_typed_keys", False):
    # A callback took a key out of its box: rerun at once, so that Streamlit's own copy of the
    # box's last value is replaced by the emptied one before anything else happens.
    st.rerun()
if hosted and st.session_state.pop("oidc_logout", False):
    st.logout()
if hosted:
    oidc_principal()
signed_in = console_ui.principal()

steps = [
    st.Page(console_ui.page("connect"), title="1 · Connect", icon=":material/key:", default=True),
    st.Page("views/preview.py", title="2 · Preview", icon=":material/query_stats:"),
    st.Page("views/mapping.py", title="3 · Mapping", icon=":material/join:"),
    st.Page("views/scope.py", title="4 · Scope", icon=":material/filter_alt:"),
    st.Page("views/run.py", title="5 · Run", icon=":material/play_circle:"),
    st.Page("views/review.py", title="6 · Review", icon=":material/fact_check:"),
    st.Page("views/batches.py", title="7 · Batches", icon=":material/inventory_2:"),
]
if hosted and signed_in is None:
    # Connect's page shows the sign-in form until someone signs in: signing in lands on Connect,
    # signing out comes back to the form, at the same address.
    steps = [st.Page(console_ui.page("connect"), title="Sign in", icon=":material/login:", default=True)]
elif hosted and signed_in is not None and signed_in.operator:
    steps.append(st.Page("views/audit.py", title="Audit trail", icon=":material/policy:"))
navigation = st.navigation(steps)
if navigation.url_path != "batches":
    # A deletion confirmed on the Batches page is done by that page's next run or not at all (with a
    # hosted administrator's key in it): one left behind, say by a sign-in lapsing, goes now.
    st.session_state.pop("delete_pending", None)


def hosted_frame() -> None:
    """The sidebar of a hosted instance: who is signed in, for which clinic, and whether a key is held."""
    who = console_ui.principal()
    if who is None:
        st.caption("Not signed in.")
        return
    if who.operator:
        st.caption(f"Signed in as **{who.name}**, operator (every clinic's batches).")
    else:
        st.caption(f"Signed in as **{who.name}** of **{who.account or who.tenant}** (clinic).")
    if running := console_ui.background_runs_sentence():
        st.caption(running)
    tenant = console_ui.work_tenant()
    if tenant is not None and who.operator:
        identity = st.session_state.get("source_identity")
        name = identity.account if identity is not None and identity.account else None
        st.caption(f"Working on **{name}** (account {tenant})." if name else f"Working on account {tenant}.")
    key = console_ui.source_key()
    if key is not None:
        st.caption(masked(parse_key(key)) + ", held until the run ends or you sign out.")
    else:
        st.caption("No API key held: Connect asks for it when a step needs it.")


def frame() -> None:
    """The sidebar: who is connected (the key masked) and where the workspace is."""
    with sidebar.container():
        st.markdown("### Cliniko migrator")
        if hosted:
            hosted_frame()
            return
        source = st.session_state.get("source_identity")
        if source is not None and "source_key" in st.session_state:
            st.caption(f"Source: **{source.account or 'account'}** ({source.shard}), as {source.user}")
            st.caption(masked(parse_key(st.session_state["source_key"])))
        else:
            st.caption("Not connected yet.")
        if running := console_ui.background_runs_sentence():
            st.caption(running)
        with contextlib.suppress(MigratorError):  # the page says what is wrong with the setting
            st.caption(f"Workspace: `{ConsoleSettings.from_env().workspace}`")


# Drawn before the page and again after it, in the same place: a page that ends early
# (``st.stop()``) keeps the first, and one that connects or disconnects shows the second.
sidebar = st.sidebar.empty()
frame()
if hosted and signed_in is not None:  # a widget, so drawn once: below the frame, outside it
    st.sidebar.button("Sign out", key="sign_out", icon=":material/logout:", on_click=console_ui.sign_out_now)
try:
    navigation.run()
except MigratorError as exc:  # every page catches its own; this is the net under them
    st.error(str(exc))
except Exception as exc:
    logging.getLogger("console").exception("page failed")
    st.error(
        f"Something unexpected went wrong on this page ({type(exc).__name__}); reload the page to try again "
        "(the console's log has the details)."
    )
frame()  # not reached when the page stops early or reruns (Streamlit's own exceptions): the first stays
