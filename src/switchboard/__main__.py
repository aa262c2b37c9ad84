"""``python -m switchboard``: the same as the ``switchboard`` command."""

import sys

from .cli import main

__all__: list[str] = []

sys.exit(main())
