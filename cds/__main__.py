"""``python -m cds`` is the ``cds`` command."""

import sys

from cds.cli import main

sys.exit(main())
