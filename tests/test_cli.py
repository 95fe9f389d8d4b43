"""python -m migrator connect / preview against the sandbox, as a support person would run them."""

from __future__ import annotations

import base64
import json
import math
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import httpx

from migrator.cliniko.filters import Filter
from migrator.preview import SOURCE_LISTS, list_key
from migrator.scoped_preview import plan_entities
from tests.conftest import ROOT, RunningSandbox


def test_preview_counts_equal_the_sandbox_totals(demo_sandbox: RunningSandbox) -> None:
    result = demo_sandbox.cli("preview", "--json", key=demo_sandbox.key("source"))
    assert result.returncode == 0, result.stderr
    preview = json.loads(result.stdout)
    totals = demo_sandbox.totals()
    assert preview["counts"] == {list_key(r, route): totals[list_key(r, route)] for r, route in SOURCE_LISTS}
    assert preview["counts"]["patients"] > 300
    requests = sum(max(1, math.ceil(n / 100)) for n in preview["counts"].values())
    assert preview["requests"] == requests
    assert preview["estimated_minutes"] == math.ceil(requests / 200 * 10) / 10


def test_preview_human_output(demo_sandbox: RunningSandbox) -> None:
    result = demo_sandbox.cli("preview", key=demo_sandbox.key("source"))
    assert result.returncode == 0, result.stderr
    totals = demo_sandbox.totals()
    requests = sum(max(1, math.ceil(totals[list_key(r, route)] / 100)) for r, route in SOURCE_LISTS)
    assert "patients" in result.stdout
    minutes = math.ceil(requests / 200 * 10) / 10
    assert result.stdout.splitlines()[-1] == (
        f"Reading everything takes {requests:,} requests: about {minutes:g} minutes at 200 requests per minute."
    )
    unpaced = demo_sandbox.cli("preview", key=demo_sandbox.key("source"), pace="0")
    assert unpaced.stdout.splitlines()[-1] == (
        f"Reading everything takes {requests:,} requests: unpaced, as fast as Cliniko answers."
    )


def test_preview_with_a_filter_counts_what_run_would_read(demo_sandbox: RunningSandbox) -> None:
    with demo_sandbox.client() as client:
        business = next(client.records("businesses")).id
        at_business = client.count("individual_appointments", [Filter("business_id", "=", business)])
        invoices_there = client.count("invoices", [Filter("business_id", "=", business)])
    result = demo_sandbox.cli(
        "preview", "--filter", f"business:{business}", "--json", key=demo_sandbox.key("source")
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["filter"], shown["exact"]) == (f"business:{business}", False)
    assert list(shown["entities"]) == plan_entities(None)
    totals = demo_sandbox.totals()
    appointments = shown["entities"]["individual_appointments"]
    assert (appointments["records"], appointments["exact"]) == (at_business, True)
    assert 0 < at_business < totals["individual_appointments"]
    assert shown["entities"]["invoices"]["records"] == invoices_there
    patients = shown["entities"]["patients"]
    assert (
        not patients["exact"] and 0 < patients["records"] < totals["patients"] + totals["patients/archived"]
    )
    assert shown["entities"]["contacts"] == {
        "records": totals["contacts"],
        "requests": max(1, math.ceil(totals["contacts"] / 100)),
        "exact": True,
        "how": "counted: copied whole whatever the filter",
    }
    assert shown["records"] == sum(e["records"] for e in shown["entities"].values())
    assert shown["requests"] == sum(e["requests"] for e in shown["entities"].values())

    text = demo_sandbox.cli("preview", "--filter", f"business:{business}", key=demo_sandbox.key("source"))
    lines = text.stdout.splitlines()
    assert lines[-2] == (
        f"Reading ≈ {shown['records']:,} records takes ≈ {shown['requests']:,} requests: "
        f"about {shown['estimated_minutes']:g} minutes at 200 requests per minute."
    )
    assert lines[-1].startswith("≈ marks estimates")
    rows = {line.split()[0]: line for line in lines[1:-2]}
    assert re.match(rf"individual_appointments +{at_business:,} ", rows["individual_appointments"])
    assert re.match(r"patients +≈ [\d,]+ ", rows["patients"])


def test_preview_for_a_cliniko_transfer_brings_note_templates_and_refuses_invoices(
    demo_sandbox: RunningSandbox,
) -> None:
    key = demo_sandbox.key("source")
    result = demo_sandbox.cli("preview", "--to", "cliniko", "--include", "treatment_notes", "--json", key=key)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    totals = demo_sandbox.totals()
    assert shown["include"] == ["treatment_note_templates", "patients", "treatment_notes"]
    assert shown["exact"] and shown["entities"]["treatment_notes"]["records"] == totals["treatment_notes"]
    assert shown["entities"]["patients"]["records"] == totals["patients"] + totals["patients/archived"]
    # Into Cliniko a record is a write on the destination's key (practitioners and businesses are mapped,
    # not written), an archived patient one more, and those writes, not the reads, set how long the
    # transfer takes.
    archived = totals["patients/archived"]
    assert archived > 0
    written = archived + sum(
        row["records"] for e, row in shown["entities"].items() if e not in ("practitioners", "businesses")
    )
    assert shown["transfer"] == {
        "reads": shown["requests"],
        "writes": written,
        "estimated_minutes": math.ceil(written / 200 * 10) / 10,  # at Cliniko's 200 a minute
        "exact": True,
    }
    assert shown["estimated_minutes"] < shown["transfer"]["estimated_minutes"] / 50  # reading alone
    text = demo_sandbox.cli("preview", "--to", "cliniko", "--include", "treatment_notes", key=key)
    assert (
        f"Writing them into the Cliniko account takes {written:,} requests on its key, one a record (a file two, "
        f"after its download from the source) and one for each of the {archived:,} cancellations and archives, "
        "while the source is read; the whole transfer: about "
        f"{shown['transfer']['estimated_minutes']:g} minutes at 200 requests per minute.\n"
    ) in text.stdout
    without_archived = demo_sandbox.cli("preview", "--no-archived-patients", "--json", key=key)
    assert json.loads(without_archived.stdout)["entities"]["patients"]["records"] == totals["patients"]
    assert json.loads(without_archived.stdout)["transfer"] is None  # the local store: reads only
    assert "invoices" in json.loads(without_archived.stdout)["include"]  # the local store takes them

    refused = demo_sandbox.cli("preview", "--to", "cliniko", "--include", "invoices", key=key)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "A Cliniko destination cannot take invoices" in refused.stderr


def test_preview_refuses_a_filter_id_the_account_lacks_and_an_unknown_destination(
    demo_sandbox: RunningSandbox,
) -> None:
    key = demo_sandbox.key("source")
    result = demo_sandbox.cli("preview", "--filter", "practitioner:1", key=key)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == (
        "error: Harbourside Physio has no practitioner with the id 1, so the filter would bring nothing; "
        "the mapping lists its practitioners with their ids."
    )
    with demo_sandbox.client() as client:
        real = str(next(client.pages("practitioners")).records[0]["id"])
    result = demo_sandbox.cli("preview", "--filter", f"practitioner:{real},999", key=key)
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: Harbourside Physio has no practitioner with the id 999, so that id would bring nothing "
        "(mistyped?); the mapping lists its practitioners with their ids."
    )
    secret = "MS" + "0" * 40 + "-au1"  # a key pasted into --to must not come back
    for command in ("preview", "run", "mapping"):
        extra = ("--out", "never.json") if command == "mapping" else ()
        result = demo_sandbox.cli(command, "--to", secret, *extra, key=key)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.strip() == (
            "error: --to takes sqlite:PATH, a local clinic store (for example sqlite:workspace/clinic.db), "
            "or cliniko, the account of MIGRATOR_DEST_KEY."
        )


def test_connect_json_for_source_and_destination(demo_sandbox: RunningSandbox) -> None:
    source = demo_sandbox.account("source")
    result = demo_sandbox.cli("connect", "--json", key=source["key"])
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown == {
        "shard": source["shard"],
        "base_url": demo_sandbox.url_template.replace("{shard}", source["shard"]),
        "account": source["name"],
        "user": source["user"],
        "is_admin": True,
        "is_practitioner": True,
    }
    dest = demo_sandbox.account("destination_admin_not_practitioner")
    result = demo_sandbox.cli("connect", "--dest", "--json", dest_key=dest["key"])
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert (shown["account"], shown["is_admin"], shown["is_practitioner"]) == (dest["name"], True, False)


def assert_one_clean_line(stderr: str, *secrets: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert ".." not in lines[0] and lines[0].endswith(".")
    assert "Traceback" not in stderr
    for secret in secrets:
        assert secret not in stderr


def test_a_key_on_the_wrong_shard_is_refused_in_one_line(demo_sandbox: RunningSandbox) -> None:
    key = demo_sandbox.key("source")
    body, shard = key.rsplit("-", 1)
    wrong = f"{body}-{'uk1' if shard != 'uk1' else 'au2'}"
    result = demo_sandbox.cli("connect", key=wrong)
    assert result.returncode == 1
    assert "did not accept the source API key" in result.stderr
    assert_one_clean_line(result.stderr, body, wrong)


def test_an_unknown_key_is_refused(demo_sandbox: RunningSandbox) -> None:
    unknown = "MSthisKeyDoesNotExistAnywhere0123456789-au2"
    sent_before = sandbox_requests(demo_sandbox)
    result = demo_sandbox.cli("preview", "--json", key=unknown)
    assert result.returncode == 1
    assert result.stdout == ""
    assert_one_clean_line(result.stderr, unknown.split("-")[0])
    # It stopped at the first 401: the counts under way (4 at a time), not one per list.
    assert sandbox_requests(demo_sandbox) - sent_before <= 5 < len(SOURCE_LISTS)


def sandbox_requests(sandbox: RunningSandbox) -> int:
    """Every request the sandbox has answered so far."""
    return int(httpx.get(f"{sandbox.origin}/_sandbox/stats", timeout=10).json()["total_requests"])


def test_a_malformed_key_is_refused_before_any_request(demo_sandbox: RunningSandbox) -> None:
    result = demo_sandbox.cli("connect", key="MSabcdefgh0123456789-australia")
    assert result.returncode == 2
    assert result.stderr.startswith("error: The source API key's suffix is not a Cliniko shard")
    assert_one_clean_line(result.stderr, "MSabcdefgh0123456789")
    # With both keys at hand, the sentence says which of the two is wrong.
    both = demo_sandbox.cli("connect", "--dest", key=demo_sandbox.key("source"), dest_key="not a key")
    assert both.returncode == 2
    assert both.stderr.startswith("error: The destination API key does not look like a Cliniko key")
    assert_one_clean_line(both.stderr, "not a key")


def test_a_pace_that_is_not_a_number_of_requests_is_refused(demo_sandbox: RunningSandbox) -> None:
    """A negative or non-finite pace once meant "unpaced" here, hammering Cliniko; now it is bad input."""
    for pace, said in (("-5", "cannot be negative"), ("nan", "0 for unpaced"), ("fast", "got 'fast'")):
        result = demo_sandbox.cli("preview", key=demo_sandbox.key("source"), pace=pace)
        assert result.returncode == 2 and result.stdout == "", pace
        assert said in result.stderr
        assert_one_clean_line(result.stderr)


def test_no_key_and_no_terminal_says_which_variable(demo_sandbox: RunningSandbox) -> None:
    result = demo_sandbox.cli("connect", "--dest")
    assert result.returncode == 2
    assert "MIGRATOR_DEST_KEY" in result.stderr
    assert_one_clean_line(result.stderr)


def test_no_key_in_verbose_logs_even_when_requests_are_retried(sandbox_factory) -> None:
    sandbox = sandbox_factory(size="tiny", seed=2, rate_limit=0, faults=0.3, stall=0.5)
    key = sandbox.key("source")
    basic = base64.b64encode(f"{key}:".encode()).decode()
    for args in (
        ("-v", "preview", "--json"),
        ("preview", "--json", "--verbose"),
    ):  # either side of the command
        result = sandbox.cli(*args, key=key)
        assert result.returncode == 0, result.stderr
        assert "retrying" in result.stderr  # the log really was written
        for secret in (key, key.split("-")[0], basic):
            assert secret not in result.stderr and secret not in result.stdout
    quiet = sandbox.cli("preview", "--json", key=key)
    assert quiet.returncode == 0 and "retrying" not in quiet.stderr


def test_the_cli_starts_without_pandas_and_leaves_it_importable(tmp_path: Path) -> None:
    """sqlite-utils would import pandas and numpy, about a second of every command's start;
    the CLI loads it with them hidden, and they import as usual afterwards."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['migrator', 'batches', '--workspace', {str(tmp_path)!r}, '--json']\n"
        "try:\n"
        "    runpy.run_module('migrator', run_name='__main__')\n"
        "except SystemExit as stop:\n"
        "    assert not stop.code, stop.code\n"
        "loaded = sorted({'pandas', 'numpy'} & set(sys.modules))\n"
        "import pandas\n"
        "print(loaded, pandas.DataFrame({'a': [1, 2]}).shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    listed, result = done.stdout.strip().splitlines()
    assert json.loads(listed) == []  # the command ran: no batches in a new workspace
    assert result == "[] (2, 1)"


def test_help_and_a_bad_option_answer_without_loading_the_library() -> None:
    """httpx, pydantic and polars take about a second to import: only the commands that need them load them."""
    heavy = ("httpx", "pydantic", "polars")
    for argv in (["--help"], ["run", "--help"], ["run", "--filter"]):
        code = (
            "import runpy, sys\n"
            f"sys.argv = ['migrator', *{argv!r}]\n"
            "try:\n"
            "    runpy.run_module('migrator', run_name='__main__')\n"
            "except SystemExit as stop:\n"
            "    code = stop.code\n"
            f"print(code, sorted(set({heavy!r}) & set(sys.modules)), file=sys.stderr)\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert done.stderr.strip().splitlines()[-1] == ("0 []" if "--help" in argv else "2 []"), argv
    # The library itself loads them on first use, under the same names as before.
    code = (
        "import sys, migrator\n"
        "before = 'httpx' in sys.modules\n"
        "migrator.ClinikoClient\n"
        "print(before, 'httpx' in sys.modules, migrator.preview.__module__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["False", "True", "migrator.preview"], done.stderr


_INTERRUPTED = """
import os, signal, sys, time
from migrator import cli

def command(args):
    action = {action!r}
    if action:  # a run that got as far as making its batch, or re-pointed a copy's
        from migrator.ledger import Ledger
        with Ledger("w") as ledger:
            ledger.audit(action, actor="cli")
    if {elsewhere}:  # another process's line meanwhile (a deletion in the same workspace): not this command's
        import subprocess
        subprocess.run(
            [sys.executable, "-c", "from migrator.ledger import Ledger; Ledger('w').audit('delete', actor='cli')"],
            check=True,
        )
    try:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl+C
        time.sleep(5)
    finally:  # still stopping (recording where the run got to) when Ctrl+C may come again
        again = {again}
        if again is not None:
            time.sleep(again)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3)
    return 0

cli.{name} = command
sys.exit(cli.main([{argv}]))
"""


def _at_the_key_prompt(typed: bytes, *command: str) -> tuple[int, str]:
    """``command`` with no key set, on a terminal; ``typed`` is sent once the prompt shows. Exit code, transcript."""
    pid, terminal = pty.fork()
    if pid == 0:  # the child: the command, on the pseudo-terminal
        os.chdir(ROOT)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
        try:
            os.execve(sys.executable, [sys.executable, "-m", "migrator", *command], env)
        finally:
            os._exit(127)  # never back into pytest
    seen, deadline = b"", time.monotonic() + 30
    sent = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([terminal], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # the command ended: its side of the terminal closed
                break
            if not chunk:
                break
            seen += chunk
        if not sent and seen.endswith(b"(input hidden): "):
            time.sleep(0.2)  # getpass has turned echo off and waits
            os.write(terminal, typed)
            sent = True
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    return os.waitstatus_to_exitcode(status), seen.decode().replace("\r\n", "\n")


def test_ctrl_c_or_ctrl_d_at_the_key_prompt_is_said_on_a_line_of_its_own(tmp_path: Path) -> None:
    """QA: Ctrl+C was said on the prompt's line, and waited for Enter once polars was loaded (run); Ctrl+D
    (no key typed) was an EOFError traceback."""
    prompt = "Source Cliniko API key (input hidden): \n"
    for command in (["connect"], ["run", "--workspace", str(tmp_path / "w")]):
        assert _at_the_key_prompt(b"\x03", *command) == (
            130,
            prompt + "error: interrupted; nothing was changed.\n",
        )
        assert _at_the_key_prompt(b"\x04", *command) == (
            2,
            prompt
            + "error: No source API key was typed: paste it at the prompt, or set MIGRATOR_SOURCE_KEY.\n",
        )
    assert not (tmp_path / "w").exists()


def test_ctrl_c_once_the_command_has_finished_leaves_its_exit_status(tmp_path: Path) -> None:
    """QA: Ctrl+C just after a command said its result, as the interpreter exits, ended the process by
    the signal (``^C``, the exit status lost). The signal is sent where that was: after ``__main__``."""
    after = (
        "import os, runpy, signal, sys, time\n"
        "sys.argv = ['migrator', 'batches', '--workspace', sys.argv[1]]\n"
        "try:\n"
        "    runpy.run_module('migrator', run_name='__main__', alter_sys=True)\n"
        "finally:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(0.5)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", after, str(tmp_path / "none")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"No batches yet: {tmp_path / 'none'} holds no ledger (ledger.db).\n",
        "",
    )


def test_ctrl_c_while_loading_or_in_generated_code_is_said_and_exits_130(tmp_path: Path) -> None:
    """QA 51: a Ctrl+C in the command's code that Python runs from a string (a dataclass's methods, made as
    a module loads) was said, yet `python -m` then ended the process by SIGINT; one inherited as ignored
    (a job a script put in the background) interrupted the command anyway."""
    script = (
        "import runpy, signal, sys\n"
        "if sys.argv[2] == 'ignored':\n"
        "    signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "from migrator import cli\n"
        "def command(args):\n"
        "    exec('import os, signal, time\\nos.kill(os.getpid(), signal.SIGINT)\\ntime.sleep(1)')\n"
        "    return 0\n"
        "cli.cmd_batches = command\n"
        "sys.argv = ['migrator', 'batches', '--workspace', sys.argv[1]]\n"
        "try:\n"
        "    runpy.run_module('migrator', run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc:\n"
        "    print(exc.code)\n"
    )
    for inherited, said, code in (
        ("default", "error: interrupted; nothing was changed.\n", "130\n"),
        ("ignored", "", "0\n"),
    ):
        done = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "w"), inherited],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, code, said), inherited


def test_ctrl_c_stops_in_one_sentence_and_twice_stops_at_once(tmp_path: Path) -> None:
    """Ctrl+C says what is left; a second one while the command is stopping ends it there, without a traceback.

    A second SIGINT straight after the first (``uv run`` passing on its copy of one sent to the
    process group) is the same Ctrl+C: the command still stops cleanly.
    """
    run, batches = ("cmd_run", '"run", "--workspace", "w"'), ("cmd_batches", '"batches", "--workspace", "w"')
    early_run = ("cmd_run", '"run", "--workspace", "w", "--json"')
    moved_run = ("cmd_run", '"run", "--workspace", "w", "--json", "-v"')  # only its store_moved line
    other_run = ("cmd_run", '"run", "--workspace", "w", "-v"')  # only another process's line
    stopped = "interrupted part-way; what was done so far is kept and recorded: run the same command again to finish it"
    for (name, argv), again, said in [
        (run, None, stopped),
        (batches, None, "interrupted; nothing was changed"),
        (early_run, None, "interrupted; nothing was changed"),  # before its batch: no "part-way"
        (moved_run, None, "interrupted; nothing was changed"),  # a copy's batches re-pointed: no record
        (other_run, None, "interrupted; nothing was changed"),  # another process's line meanwhile
        (run, 0.0, stopped),
        (
            run,
            0.7,
            "interrupted again, so stopped at once; what was written is kept: run the same command "
            "again to finish it",
        ),
        (batches, 0.7, "interrupted again, so stopped at once; nothing was changed"),
    ]:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                _INTERRUPTED.format(
                    name=name,
                    argv=argv,
                    again=again,
                    action={run: "run", moved_run: "store_moved"}.get((name, argv)),
                    elsewhere=(name, argv) == other_run,
                ),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert (done.returncode, done.stderr.strip()) == (130, f"error: {said}."), (name, argv, again)
