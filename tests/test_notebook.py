"""notebooks/reconciliation.ipynb runs top to bottom (nbclient, a real kernel), so it never rots."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "reconciliation.ipynb"


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream" and output.name == "stdout":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(str(output.data.get("text/plain", "")) + str(output.data.get("text/html", "")))
    return "".join(parts)


def test_the_reconciliation_notebook_runs_top_to_bottom(tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") for c in code), "the notebook is kept without outputs"

    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()  # raises CellExecutionError, naming the cell, if any cell fails

    errors = [o for c in code for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    text = "\n".join(_text(c) for c in code)
    assert "Everything reconciles." in text
    assert "398 patients checked; 0 balances differ." in text
    assert "shape: (0, 6)" in text  # moved_invoices: no invoice with another patient
    assert "practitioner_excluded" in text  # the skipped rows, by reason
    assert "34 requests instead of 201 (167 saved); created 0." in text  # the sweep before go-live
    charts = [c for c in code if "alt.Chart" in c.source]
    assert len(charts) == 2 and all("vega" in _text(c).lower() for c in charts)
    assert list(tmp_path.iterdir()) == []  # it works in a temporary folder of its own
