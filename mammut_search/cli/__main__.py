"""`python -m mammut_search.cli ...` is the `mammut` command (handy under torchrun)."""

import sys

from . import main

sys.exit(main())
