#!/usr/bin/env python3
"""machop's command line: `./ch --help`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machop.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
