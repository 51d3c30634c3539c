"""``python -m qdq_optimizer``: the same command line as the ``qdqopt`` console script."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
