"""`python -m mailbridge` is the `mailbridge` command."""

import sys

from mailbridge.cli import main

sys.exit(main())
