"""``python -m migrator``: see :mod:`migrator.cli`."""

import sys

# sqlite-utils imports pandas and numpy at its own import whenever they are installed (the
# console's streamlit brings both), only to accept their values in its inserts, which the
# migrator never uses: that was about a second of every CLI command's start. The CLI loads
# sqlite-utils with the two hidden, then unhides them, so anything later imports them as usual.
_hidden = [name for name in ("pandas", "numpy") if name not in sys.modules]
for _name in _hidden:
    sys.modules[_name] = None  # type: ignore[assignment]  # makes `import pandas` raise ImportError
try:
    import sqlite_utils  # noqa: F401
finally:
    for _name in _hidden:
        if sys.modules.get(_name) is None:
            del sys.modules[_name]

import signal  # noqa: E402

from migrator.cli import main  # noqa: E402

code = main()
# The command is done and has said so: a Ctrl+C as the interpreter exits (joining polars' threads,
# flushing) has nothing left to stop, and would only end the process by the signal, its exit status lost.
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.exit(code)
