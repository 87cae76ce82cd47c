"""``python -m ulmed``: the same command line as the ``ulmed`` script."""

import sys

from ulmed.cli import main

if __name__ == "__main__":
    sys.exit(main())
