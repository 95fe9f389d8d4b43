"""``python -m migrator``: see :mod:`migrator.cli`."""

import sys

from migrator.cli import main

sys.exit(main())
