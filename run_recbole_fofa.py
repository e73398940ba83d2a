"""Command line entry point; same flags as RecBole's run_recbole.py (see docs/usage.md)."""

import sys

from recbole_fofa.cli import main

if __name__ == "__main__":
    sys.exit(main())
