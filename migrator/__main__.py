"""``python -m migrator``: see :mod:`migrator.cli`."""

import signal
import sys

try:
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

    from migrator.cli import main
except KeyboardInterrupt:  # Ctrl+C while the command was still loading: nothing was run
    print("error: interrupted; nothing was changed.", file=sys.stderr)
    code = 130
else:
    code = main()
# The command is done and has said so: a Ctrl+C as the interpreter exits (joining polars' threads,
# flushing) has nothing left to stop, and would only end the process by the signal, its exit status lost.
signal.signal(signal.SIGINT, signal.SIG_IGN)
# A Ctrl+C that landed in code run from a string (a dataclass's generated methods as a module
# loads) leaves CPython's "unhandled KeyboardInterrupt" mark set even once caught and said, and
# `python -m` then ends the process by SIGINT at exit. Running any string clears that mark.
exec("")
sys.exit(code)
