"""``python -m quantum_trader_operator [options]``: the same as ``qt operator [options]``."""

from __future__ import annotations

import sys

from quantum_trader.cli import main

if __name__ == "__main__":
    main(["operator", *sys.argv[1:]], prog_name="quantum_trader_operator")
