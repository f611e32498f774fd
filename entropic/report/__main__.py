"""`python -m entropic.report`: see entropic.report.cli."""

import sys

from entropic.report.cli import main

sys.exit(main())
