"""``python -m train``: see ``python -m train --help``."""

import sys

from train.cli import main

if __name__ == "__main__":  # worker processes (spawn) import this module again: they must not start a run
    sys.exit(main())
