"""`python -m tests.chaos`: see `tests.chaos.run`."""

import sys

from tests.chaos.run import main

sys.exit(main())
