"""``python -m harness`` is the ``harness`` command (used to start extra workers)."""

import sys

from .cli import main

sys.exit(main())
