"""The ``securetorch`` command: ``securetorch demo`` and ``securetorch party``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="securetorch", description="secure inference with three parties")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run a secure model on three local parties and compare with plaintext")
    sub.add_parser("party", help="run one party process (see --help)", add_help=False)
    if argv[:1] == ["party"]:
        from securetorch.runtime.party import main as party_main

        party_main(argv[1:])
        return
    args = parser.parse_args(argv)
    if args.command == "demo":
        from securetorch.demo import run_demo

        run_demo()


if __name__ == "__main__":
    main()
