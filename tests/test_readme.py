"""The README's library snippet runs as written, so an analyst's first copy and paste works."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import polars as pl
import pytest

import migrator
from migrator.mapping import load_mapping, to_rows
from tests.conftest import ROOT, RunningSandbox


def readme_block(after: str, language: str) -> str:
    """The first ``language`` code block of the README after the line holding ``after``."""
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"```{language}\n(.*?)```", text[text.index(after) :], re.S)
    assert found, f"no {language} block after {after!r} in the README"
    return found.group(1)


def test_the_readmes_library_snippet_runs_as_written(
    demo_sandbox: RunningSandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = readme_block("From a notebook or a script:", "python")
    monkeypatch.chdir(tmp_path)  # the snippet's relative paths: clinic.db, workspace/, review/
    for name in [n for n in os.environ if n.startswith("MIGRATOR_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MIGRATOR_API_URL", demo_sandbox.url_template)
    monkeypatch.setenv("MIGRATOR_SOURCE_KEY", demo_sandbox.key("source"))
    monkeypatch.setenv("MIGRATOR_REQUESTS_PER_MINUTE", "0")  # the library paces at Cliniko's 200 a minute

    names: dict[str, object] = {}
    exec(compile(code, "README.md (For analysts)", "exec"), names)  # our own README's code

    result, check = names["result"], names["check"]
    assert isinstance(result, migrator.RunResult)
    # The mapping written for the CLI reads back as the table's rows, the decision on former practitioners kept.
    assert load_mapping(tmp_path / "mapping.json") == to_rows([names["table"]])  # type: ignore[list-item]
    assert "unresolved" not in {row.action for row in load_mapping(tmp_path / "mapping.json")}
    patients = result.entities["patients"]
    assert patients["created"] == patients["in_scope"] > 300  # a fresh store: every patient is new
    assert result.entities["practitioners"]["skipped"] == 0  # the former ones went to one generic record
    assert isinstance(check, migrator.Reconciliation)
    assert check.ok, check.problems
    assert check.counts.filter(pl.col("difference") != 0).is_empty()
    assert {"counts.csv", "balances.parquet", "skipped.csv"} <= {
        p.name for p in (tmp_path / "review").iterdir()
    }

    # The snippet ends by deleting its batch: the frame says so, and the store holds no patient.
    batches = migrator.batches(workspace=tmp_path / "workspace")
    assert batches.select("id", "status").rows() == [(result.batch_id, "deleted")]
    with sqlite3.connect(tmp_path / "clinic.db") as store:
        assert store.execute("SELECT count(*) FROM patients").fetchone() == (0,)
