"""``python -m gencompress`` and the ``gencompress`` command."""

import sys


def main(argv=None):
    try:
        from gencompress.cli import main as run
    except KeyboardInterrupt:  # Ctrl-C while Python imports gencompress: nothing to clean up yet
        sys.exit(130)
    run(argv)


if __name__ == "__main__":
    main()
