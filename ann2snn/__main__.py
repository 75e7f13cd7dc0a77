"""``python -m ann2snn ...`` (and ``torchrun -m ann2snn train ...``) and the ``ann2snn``
console script: the CLI, with a Ctrl-C during its imports (torch takes seconds to load)
ending in one line, not a traceback."""

import sys


def main() -> int:
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("ann2snn: interrupted while starting", file=sys.stderr)
        return 130
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
