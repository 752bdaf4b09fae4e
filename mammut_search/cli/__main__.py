"""`python -m mammut_search.cli ...` is the `mammut` command (handy under torchrun)."""

import sys

from mammut_search.cli import main

sys.exit(main())
