"""``python -m spinecad``: see :mod:`spinecad.cli`."""

import sys

from spinecad.cli import main

sys.exit(main())
