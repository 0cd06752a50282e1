"""The ``securetorch`` command: ``demo``, ``party`` and ``keygen``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="securetorch", description="secure inference with three parties")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run a secure model on three local parties and compare with plaintext")
    sub.add_parser(
        "party", help="run a party: securetorch party --rank R --config cluster.toml --key R.key_secret", add_help=False
    )
    keygen = sub.add_parser("keygen", help="write a CURVE key pair NAME.key (public) and NAME.key_secret")
    keygen.add_argument("name", help="file name stem, e.g. party0 or driver")
    keygen.add_argument("--dir", default=".", help="directory for the two files (default: here)")
    if argv[:1] == ["party"]:
        from securetorch.runtime.party import main as party_main

        party_main(argv[1:])
        return
    args = parser.parse_args(argv)
    if args.command == "demo":
        from securetorch.demo import run_demo

        run_demo()
    elif args.command == "keygen":
        from securetorch.comm.security import keygen as write_keys

        public_file, secret_file, public = write_keys(args.dir, args.name)
        print(f"wrote {public_file} and {secret_file} (keep it private)")
        print(f"public key: {public}")


if __name__ == "__main__":
    main()
