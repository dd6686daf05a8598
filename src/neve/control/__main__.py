"""``python -m neve.control --home DIR``: run the control plane daemon in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from neve.config import default_home
from neve.control.daemon import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neve.control", description=__doc__)
    parser.add_argument("--home", type=Path, default=None, help="account directory (NEVE_HOME)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    home = (args.home or default_home()).expanduser().resolve()
    return serve(home)


if __name__ == "__main__":
    sys.exit(main())
