"""Promises about the project itself: lint-clean, a UI-free library, a pinned public surface, CI = README."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import migrator

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_lint_and_format_are_clean() -> None:
    lint = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_library_type_checks() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_library_never_imports_streamlit() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "migrator").rglob("*.py")
        if re.search(r"^\s*(import streamlit|from streamlit)", path.read_text(), re.MULTILINE)
    ]
    assert offenders == []
    probe = "import sys, migrator, migrator.cli, migrator.sandbox; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_surface_is_pinned() -> None:
    assert migrator.__all__ == sorted(migrator.__all__, key=str.lower) or migrator.__all__ == sorted(
        migrator.__all__
    )
    assert set(migrator.__all__) == {
        "APIError",
        "AccessError",
        "ApiKey",
        "AuthError",
        "BatchNotDeletable",
        "BatchNotFound",
        "ClientConfig",
        "ClinikoClient",
        "ConfigError",
        "DeletionPlan",
        "FatalAPIError",
        "Filter",
        "Identity",
        "MappingError",
        "MigratorError",
        "NotFoundError",
        "Preview",
        "ReadOnlyError",
        "Reconciliation",
        "RetriableAPIError",
        "RunResult",
        "ScopedPreview",
        "ValidationAPIError",
        "batches",
        "connect",
        "delete_batch",
        "mapping",
        "parse_key",
        "preview",
        "reconcile",
        "run",
        "save_mapping",
        "scoped_preview",
    }
    for name in migrator.__all__:
        assert hasattr(migrator, name)


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"^(pip install uv && uv run pytest)\b", readme, re.MULTILINE)
    assert command, "the README's quick start must show the test command"
    assert command.group(1) in (ROOT / ".ci" / "run").read_text()
