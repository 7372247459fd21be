"""`python -m pluralign` is the `pluralign` command."""

import sys

from pluralign.cli import main

sys.exit(main())
