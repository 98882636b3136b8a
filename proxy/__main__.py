"""``python -m proxy`` is the ``defender-proxy`` command."""

import sys

from proxy.cli import main

sys.exit(main())
