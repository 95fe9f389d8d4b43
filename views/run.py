"""Run: start, stop and resume a migration that goes on in the background; follow it from the ledger."""

from __future__ import annotations

import polars as pl
import streamlit as st
from pydantic import SecretStr

from console_ui import (
    actor,
    cliniko_keys,
    cliniko_target,
    connected,
    current_preview,
    destination_lease,
    hosted,
    mapping_rows,
    next_step,
    open_destination,
    plan_choices,
    principal,
    rows_to_decide,
    run_registry,
    scope_sentence,
    settings,
    source_client,
    source_key,
    table,
    tenant_scope,
    use_typed_key,
    work_tenant,
)
from migrator.background import plan_of, require_resumable_with
from migrator.console import batch_destination_problem, go_live_sentence, progress_frame, time_left
from migrator.errors import ConfigError, MigratorError
from migrator.hosted import KeyLease, Principal, drop_all, go_live_as, plan_for_tenant, resume_as, stop_as
from migrator.ledger import Batch
from migrator.plan import records_of
from migrator.scoped_preview import plan_entities, scoped_preview
from migrator.workflow import make_plan, source_account_of, verify_source

STATUS_WORDS = {
    "running": "running",
    "stopped": "stopped: resume it to go on from where it stopped",
    "failed": "failed: resume it to go on from where it stopped",
    "completed": "completed",
    "deleting": "being deleted",
    "deleted": "deleted",
}

state = st.session_state
registry = run_registry()
config = settings()
scope = tenant_scope()  # None: every batch (local mode, operators); a clinic's account id otherwise
who, role = actor()


def lease() -> KeyLease | None:
    """The hosted session's key lease (``None`` in local mode)."""
    found = state.get("key_lease")
    return found if isinstance(found, KeyLease) else None


def start(*, top_up: bool = False) -> None:
    """Make the plan from the session's choices and start it (or join the run already doing it)."""
    rows, problems = mapping_rows()
    if problems:
        raise ConfigError(
            f"A mapping row is not valid yet ({problems[0].rstrip('.')}); fix it on the Mapping page."
        )
    if not rows:
        raise ConfigError("There is no mapping yet: open the Mapping page first.")
    scope, include, archived = plan_choices()
    with source_client() as client:
        identity = verify_source(client)
        with open_destination() as (ledger, store):
            plan = make_plan(
                client,
                identity,
                store,
                scope=scope,
                include=include,
                mappings=rows,
                include_archived_patients=archived,
                ledger=ledger,
            )
    preview = current_preview()  # into a Cliniko account, it counted the cancellations and archives too
    expected = preview.expected()
    held, key = lease(), source_key()
    if key is None:
        raise ConfigError("Connect the source account again: its key is no longer held by this session.")
    if hosted():
        tenant = work_tenant()
        if tenant is None or held is None:
            raise ConfigError("Connect the clinic's account on the Connect page first.")
        plan = plan_for_tenant(plan, tenant)
    handle = registry.start(
        plan,
        key,
        workspace=config.workspace,
        client_config=config.client_config(state.get("url_template")),
        expected=expected,
        follow_ups=preview.follow_ups,
        top_up=top_up,
        actor=who,
        role=role,
        # A hosted session's keys (the source's, a Cliniko destination's) go when the run ends.
        on_end=drop_all(held, destination_lease()) if held is not None else None,
        destination_keys=cliniko_keys() if plan.destination.startswith("cliniko:") else None,
    )
    state.run_batch = handle.batch_id
    if handle.error:
        raise ConfigError(handle.error)


def resume(batch_id: str) -> None:
    """Resume a stopped, failed or interrupted batch with the plan it was started with."""
    with config.open_ledger() as ledger:
        ledger.batch(batch_id, tenant=scope)  # another clinic's batch is "not found", as an unknown one
        plan = plan_of(ledger, batch_id)
    with source_client() as client:
        identity = verify_source(client)
        with config.open_ledger() as ledger:
            account = source_account_of(identity, ledger)  # a renamed account goes by its batches' name
        require_resumable_with(plan, batch_id, account)  # before the counts: another account's are no use
        preview = scoped_preview(
            client,
            plan.scope,
            plan.include,
            include_archived_patients=plan.include_archived_patients,
            count_follow_ups=plan.destination.startswith("cliniko:"),
        )
        expected = preview.expected()
    held, signed_in = lease(), principal()
    if held is not None and signed_in is not None:
        with config.open_ledger() as ledger:
            handle = resume_as(
                ledger,
                registry,
                signed_in,
                batch_id,
                held,
                workspace=config.workspace,
                client_config=config.client_config(),
                expected=expected,
                follow_ups=preview.follow_ups,
                destination=destination_lease(),
            )
        state.run_batch = handle.batch_id
        return
    key = source_key()
    if key is None:
        raise ConfigError("Connect the source account again: its key is no longer held by this session.")
    problem = batch_destination_problem(plan.destination, cliniko_target())
    if problem:
        raise ConfigError(problem)
    handle = registry.resume(
        batch_id,
        key,
        source_account=account,
        workspace=config.workspace,
        client_config=config.client_config(state.get("url_template")),
        expected=expected,
        follow_ups=preview.follow_ups,
        destination_keys=cliniko_keys() if plan.destination.startswith("cliniko:") else None,
    )
    state.run_batch = handle.batch_id


def stop(handle_batch: str) -> None:
    """Ask the run to stop: through the hosted layer (audited, tenant-checked) or directly."""
    signed_in = principal()
    if signed_in is not None:
        with config.open_ledger() as ledger:
            stop_as(ledger, registry, signed_in, handle_batch)
        return
    handle = registry.get(handle_batch)
    if handle is not None:
        handle.stop()


def followed_batch() -> str | None:
    """The batch this page follows: the session's, else a run going on, else the newest batch.

    Of the clinic the session works on: an operator connected to a clinic's account sees
    that clinic's batches here, not another clinic's newer one (with nothing connected,
    every clinic's, as on the Batches page).
    """
    working = work_tenant() if hosted() else None
    follow_scope = working or scope
    if state.get("run_batch") and follow_scope != scope:  # an operator's run for the clinic worked on before
        with config.open_ledger() as ledger:
            if not any(b.id == state.run_batch for b in ledger.batches(tenant=follow_scope)):
                state.pop("run_batch")
    if state.get("run_batch"):
        return str(state.run_batch)
    for handle in registry.active(tenant=follow_scope):
        if handle.batch_id:
            return handle.batch_id
    with config.open_ledger() as ledger:
        batches = ledger.batches(tenant=follow_scope)
    running = [b for b in batches if b.status == "running"]
    newest = running or [b for b in batches if b.status != "deleted"]
    return newest[0].id if newest else None


def live(batch: Batch) -> bool:
    handle = registry.get(batch.id, tenant=scope)
    return (handle is not None and handle.running) or batch.running_elsewhere()


st.title("Run")
active = registry.active(tenant=work_tenant() if hosted() else None)

if connected():
    rows, problems = mapping_rows()
    undecided = [r for r in rows if r.action == "unresolved"]
    source = state.source_identity
    check = state.get("dest_check")
    into = (
        f"the Cliniko account **{check.account_name or check.target}**, through its API"
        if cliniko_target() is not None and check is not None
        # A hosted instance keeps each clinic's store in a folder of the server's that is no business of theirs.
        else "the clinic's local store on this instance"
        if hosted()
        else f"the local clinic store `{config.store_target.removeprefix('sqlite:')}`"
    )
    st.markdown(f"From **{source.account or source.user}** into {into}  \n{scope_sentence()}.")
    blocked = None
    if not rows:
        blocked = (
            "Open the Mapping page before starting a run: it needs every practitioner, business and "
            "appointment type decided (a stopped batch below resumes with its own decisions)."
        )
    elif undecided or problems:
        blocked = f"{rows_to_decide(len(undecided) + len(problems))} a decision on the Mapping page."
    elif state.get("plan_incomplete"):
        blocked = str(state.plan_incomplete)
    if blocked:
        st.info(blocked)
    if st.button(
        "Start the run",
        key="run_start",
        type="primary",
        icon=":material/play_arrow:",
        disabled=blocked is not None or bool(active),
        help="Runs in the background: leave this page or close the tab, it keeps going. "
        "Running the same plan again only brings what is missing.",
    ):
        try:
            with st.spinner("Starting…"):
                start()
            st.rerun()
        except MigratorError as exc:
            st.error(str(exc))
    if st.button(
        "Top up: bring only what changed",
        key="run_top_up",
        icon=":material/update:",
        disabled=blocked is not None or bool(active),
        help="The last sweep before go-live: reads only what changed at the source since this plan's last "
        "completed batch started (new, edited, cancelled and deleted records), for a small share of the requests.",
    ):
        try:
            with st.spinner("Starting the top-up…"):
                start(top_up=True)
            st.rerun()
        except MigratorError as exc:
            st.error(str(exc))
elif hosted():
    st.info(
        "Connect the clinic's account (its API key, on the Connect page) to start or resume a run; runs show below."
    )
else:
    st.info("Connect a source account (or the demo clinic) to start a run; runs already going show below.")

batch_id = followed_batch()
if batch_id is None:
    st.caption("No run yet.")
    st.stop()

try:
    with config.open_ledger() as ledger:
        first = ledger.batch(batch_id, tenant=scope)
except MigratorError as exc:
    state.pop("run_batch", None)
    st.error(str(exc))
    st.stop()


def go_live_section(batch: Batch) -> None:
    """After a transfer into Cliniko: no patient is messaged until Go live restores their preferences."""
    with config.open_ledger() as ledger:
        done = any(a["action"] == "go_live" for a in ledger.audit_log(batch.id))
    if message := state.pop("go_live_message", None):
        st.success(message)
    elif done:
        st.success("This batch is live: its patients' reminder and confirmation preferences are restored.")
    if done:
        return
    st.info(
        "No patient is messaged yet: every patient this batch created has reminders and confirmation emails off. "
        "Go live once the clinic starts working in the new account: that restores each patient's own preferences."
    )
    if hosted():
        hosted_go_live(batch)
        return
    problem = batch_destination_problem(batch.destination, cliniko_target())
    if problem:
        st.caption(problem)
        return
    sure = st.checkbox(
        "Turn each transferred patient's reminders and confirmations back on", key="go_live_confirm"
    )
    if st.button("Go live", key="go_live", type="primary", icon=":material/campaign:", disabled=not sure):
        from migrator.destinations.cliniko import go_live

        try:
            with (
                st.spinner("Restoring patients' preferences…"),
                open_destination(batch.destination) as (
                    ledger,
                    destination,
                ),
            ):
                result = go_live(ledger, destination, batch.id, actor=who)
            state.go_live_message = go_live_sentence(result)
            st.rerun(scope="app")
        except MigratorError as exc:
            st.error(str(exc))


def go_live_with_key(batch_id: str) -> None:
    """Go live on a hosted instance (a callback: the key box is emptied whatever happens)."""

    def go_live(who: Principal, key: SecretStr) -> None:
        state.go_live_message = go_live_sentence(go_live_as(config, who, batch_id, key))

    use_typed_key(
        "go_live_admin_key",
        error="go_live_error",
        missing="Enter an administrator's API key of the destination account to go live.",
        step=go_live,
    )


def hosted_go_live(batch: Batch) -> None:
    """Go live on a hosted instance: an administrator's key of the destination account, checked now, not kept."""
    if error := state.pop("go_live_error", None):
        st.error(error)
    sure = st.checkbox(
        "Turn each transferred patient's reminders and confirmations back on", key="go_live_confirm"
    )
    st.text_input(
        "An administrator's API key of the destination account",
        type="password",
        key="go_live_admin_key",
        help="Checked with Cliniko when you press Go live, used for that step only and never kept.",
    )
    st.button(
        "Go live",
        key="go_live",
        type="primary",
        icon=":material/campaign:",
        disabled=not sure,
        on_click=go_live_with_key,
        args=(batch.id,),
    )


@st.fragment(run_every=1.0 if live(first) else None)
def follow(batch_id: str, was_live: bool) -> None:
    """The batch as the ledger has it now: redrawn every second while it runs."""
    with config.open_ledger() as ledger:
        batch = ledger.batch(batch_id, tenant=scope)
        progress = ledger.progress(batch_id)
    handle = registry.get(batch_id, tenant=scope)
    here = handle is not None and handle.running
    elsewhere = batch.running_elsewhere()
    interrupted = batch.status == "running" and not here and not elsewhere
    word = "interrupted: its process ended; resume it" if interrupted else STATUS_WORDS[batch.status]
    st.subheader(f"Batch {batch.id}")
    st.markdown(f"Status: **{word}**" + (" (in another process)" if elsewhere else ""))

    frame = progress_frame(
        progress,
        handle.expected if handle is not None else {},
        stages=plan_entities(batch.plan.get("include")),
        finished=batch.status == "completed",
    )
    totals = {a: int(frame[a].sum()) for a in ("created", "linked", "already_present", "skipped")}
    cols = st.columns(4)
    cols[0].metric("Created", f"{totals['created']:,}")
    cols[1].metric("Linked", f"{totals['linked']:,}", help="Equal records already in the destination.")
    cols[2].metric("Already present", f"{totals['already_present']:,}", help="Brought by an earlier batch.")
    cols[3].metric("Skipped", f"{totals['skipped']:,}", help="Each with its reason, on the Review page.")
    if here and config.requests_per_minute > 0:
        with config.open_ledger() as ledger:
            left = time_left(
                ledger,
                batch,
                frame,
                config.requests_per_minute,
                handle.follow_ups if handle is not None else None,
            )
        if left:
            st.caption(left)

    buttons = st.columns(4)
    if here and handle is not None:
        if handle.stop_event.is_set():
            st.caption("Stopping after the page in hand…")
        elif buttons[0].button("Stop", key="run_stop", icon=":material/stop:"):
            try:
                stop(batch.id)
                st.caption("Stopping after the page in hand…")
            except MigratorError as exc:
                st.error(str(exc))
    elif (
        (batch.status in ("stopped", "failed") or interrupted)
        and connected()
        and buttons[0].button("Resume", key="run_resume", type="primary", icon=":material/resume:")
    ):
        try:
            with st.spinner("Resuming: counting what the batch reads…"):
                resume(batch.id)
            st.rerun(scope="app")
        except MigratorError as exc:
            st.error(str(exc))
    elif (batch.status in ("stopped", "failed") or interrupted) and not connected():
        st.caption("Connect the account it reads from again, on the Connect page, to resume it here.")
    if handle is not None and handle.error:
        st.error(handle.error)

    bars = st.columns(2)
    for index, row in enumerate(frame.iter_rows(named=True)):
        if row["finished"]:
            text = f"{row['label']}: {row['done']:,} ✓"
        elif row["started"] and row["expected"]:
            text = f"{row['label']}: {row['done']:,} of about {row['expected']:,}"
        elif row["started"]:
            text = f"{row['label']}: {row['done']:,} so far"
        else:
            text = f"{row['label']}: waiting"
        bars[index % 2].progress(row["fraction"], text=text)

    with st.expander("Counts per stage"):
        table(
            frame.select(
                pl.col("label").alias("Stage"),
                pl.col("done").alias("Handled"),
                pl.col("created").alias("Created"),
                pl.col("linked").alias("Linked"),
                pl.col("already_present").alias("Already present"),
                pl.col("skipped").alias("Skipped"),
            ),
        )
    if batch.status == "completed":
        seconds = (batch.finished_at - batch.created_at).total_seconds() if batch.finished_at else None
        with config.open_ledger() as ledger:
            resumed = sum(e["action"] == "resume" for e in ledger.audit_log(batch.id))
            rewritten = ledger.updated_counts(batch.id)
        took = f" in {seconds:,.0f} s" if seconds is not None else ""
        if resumed and seconds is not None:  # the time it sat stopped is in there too
            took = f", {seconds:,.0f} s after it started (resumed {resumed} {'time' if resumed == 1 else 'times'})"
        st.success(f"Batch {batch.id} is complete{took}: {sum(totals.values()):,} source records handled.")
        result = handle.result if handle is not None else None
        if result is not None and result.top_up is not None:
            saved = result.requests_saved
            used = result.batch_requests or result.requests
            st.info(
                f"Top-up of batch {result.top_up.of}: {used:,} requests"
                + (
                    f", {saved:,} fewer than the full run's {result.top_up.baseline_requests:,}."
                    if saved
                    else "."
                )
            )
        if rewritten:
            st.info(
                f"Updated in place {records_of('records', sum(rewritten.values()))} an earlier batch brought ("
                + ", ".join(records_of(e, n) for e, n in rewritten.items())
                + "): changed in Cliniko since, edited here, or given another mapping. The Review page lists "
                "each with why."
            )
        if batch.destination.startswith("cliniko:"):
            go_live_section(batch)
        next_step("Next: review it", "review", key="next_review")
    if was_live and not (here or elsewhere):
        st.rerun(scope="app")  # the run ended: redraw the page without the timer


follow(batch_id, live(first))
