"""The ``securetorch`` command: ``demo``, ``party``, ``keygen`` and ``netcheck``."""

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
    netcheck = sub.add_parser(
        "netcheck", help="measure round trips and bandwidth between running parties: the profile to declare"
    )
    netcheck.add_argument("--config", required=True, help="the cluster file")
    netcheck.add_argument("--key", required=True, help="this driver's secret key file (an owner or admin)")
    netcheck.add_argument("--rounds", type=int, default=20, help="round trips to time (default 20)")
    netcheck.add_argument("--megabytes", type=float, default=8.0, help="bulk bytes per peer (default 8 MB)")
    if argv[:1] == ["party"]:
        from securetorch.runtime.party import main as party_main

        party_main(argv[1:])
        return
    args = parser.parse_args(argv)
    if args.command == "demo":
        from securetorch.demo import run_demo

        run_demo()
    elif args.command == "netcheck":
        from securetorch.runtime.cluster import Cluster

        with Cluster.from_config(args.config, key=args.key) as cluster:
            profile = cluster.netcheck(args.rounds, args.megabytes)
        print(f"measured between the parties: {profile.rtt_s * 1e3:.3g} ms RTT, {profile.bandwidth_bps / 1e9:.3g} Gbps")
        print("declare it in the cluster file, for the parties to pick protocol variants for it:")
        print(f"[network]\nbandwidth_bps = {profile.bandwidth_bps:.3g}\nrtt_s = {profile.rtt_s:.3g}")
    elif args.command == "keygen":
        from securetorch.comm.security import keygen as write_keys

        public_file, secret_file, public = write_keys(args.dir, args.name)
        print(f"wrote {public_file} and {secret_file} (keep it private)")
        print(f"public key: {public}")


if __name__ == "__main__":
    main()
