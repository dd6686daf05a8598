"""``python -m neve.control [--home DIR] [--host H] [--port P]``: run the control plane daemon.

It runs in the foreground of this process; ``neve.connect()`` and ``neve server start`` start it
detached, in its own session, with its output appended to ``<home>/logs/control.log``.
Exit status: 0 after a clean stop, 17 when another daemon already serves the account, 1 on a
failure (the log says why).
"""

from __future__ import annotations

import argparse
import sys

from neve.control.serve import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m neve.control", description="Run the neve control plane daemon."
    )
    parser.add_argument("--home", default=None, help="account directory (default: NEVE_HOME)")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    args = parser.parse_args(argv)
    return serve(args.home, host=args.host, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
