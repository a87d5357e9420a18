"""``python -m capsup.supervisor``: the ``capsup`` command."""

import sys

from capsup.supervisor.cli import main

sys.exit(main())
