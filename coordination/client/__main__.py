"""`python -m coordination.client`: the same as the `arbiter-swap` command."""

import sys

from coordination.client.cli import main

sys.exit(main())
