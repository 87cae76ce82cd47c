"""``python -m ulmed.cli`` (and ``torchrun -m ulmed.cli``): the same command line as the ``ulmed`` script."""

import sys

from ulmed.cli.entry import main

if __name__ == "__main__":
    sys.exit(main())
