"""``python -m recbole_fofa`` is ``run_recbole_fofa``."""

import sys

from recbole_fofa.cli import main

if __name__ == "__main__":
    sys.exit(main())
