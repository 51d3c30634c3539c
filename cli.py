"""Run qdqopt from a source checkout: ``python cli.py ...``.

A thin shim: the command line lives in ``qdq_optimizer/cli.py`` (the ``qdqopt`` console script and
``python -m qdq_optimizer``); this file is not installed.
"""

from __future__ import annotations

import sys

from qdq_optimizer.cli import SUBCOMMANDS, main, qdqopt

__all__ = ["SUBCOMMANDS", "main", "qdqopt"]

if __name__ == "__main__":
    sys.exit(main())
