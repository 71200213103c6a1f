"""``python -m cacstream`` is the same as the ``cacstream`` command."""

import sys

from cacstream.engine.cli import main

sys.exit(main())
