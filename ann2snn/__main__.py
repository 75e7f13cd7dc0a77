"""``python -m ann2snn ...`` (and ``torchrun -m ann2snn train ...``): the CLI."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
