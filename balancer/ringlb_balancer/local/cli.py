"""The ``ringlb`` command: ``ringlb dev`` runs the whole data plane locally."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

from ringlb_balancer import tls
from ringlb_balancer.local import warmup
from ringlb_balancer.local.supervisor import LocalConfig, Supervisor
from ringlb_replica.cache import MAX_MISS_COST_MS, MAX_SIZE
from ringlb_ring import keys, naming
from ringlb_ring.hashing import STRATEGIES, HashingConfig
from ringlb_ring.hashing.warmup import WARMUP_STRATEGIES
from ringlb_ring.membership import KEY_SOURCES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ringlb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="balancer + replicas + supervisor on loopback, no cluster")
    dev.add_argument("--replicas", type=int, default=3, help="initial replica count (default 3)")
    dev.add_argument("--hostnames", nargs="*", default=[], help="names for the first replicas")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=5000)
    dev.add_argument("--workers", type=int, default=2, help="balancer gunicorn workers")
    dev.add_argument("--strategy", choices=STRATEGIES, default="maglev")
    dev.add_argument("--vnodes", type=int, default=160, help="ring: points per member")
    dev.add_argument("--table-size", type=int, default=65537, help="maglev: prime table size")
    dev.add_argument("--seed-formulas", choices=("original", "reissue"), default="original")
    dev.add_argument("--bounded-load", type=float, default=0.0, help="c, e.g. 1.25; 0 disables")
    dev.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        metavar="S",
        help="a change of the ring moves its keys in steps over S seconds (maglev, ring): a new "
        "replica's share grows, a removed one hands its keys over before it stops; 0: at once",
    )
    dev.add_argument("--key-source", choices=KEY_SOURCES, default="header")
    dev.add_argument("--key-name", default="X-Request-ID", help="header, cookie or query parameter name")
    dev.add_argument("--key-index", type=int, default=0, help="path-segment: which one, 0 for the first")
    dev.add_argument(
        "--key-fallback",
        action="append",
        default=[],
        metavar="SOURCE[:NAME]",
        help="a source tried when the ones before give no key, in order; repeatable: "
        "header:X-Session, cookie:sid, query:user, path-segment:1, client-ip",
    )
    dev.add_argument(
        "--cache-size", type=int, default=0, help="each replica caches this many request keys (LRU; 0: no cache model)"
    )
    dev.add_argument(
        "--miss-cost-ms", type=float, default=0.0, help="what a replica's cache miss costs, in milliseconds (a sleep)"
    )
    dev.add_argument(
        "--token", default="", help="require this bearer token on /add and /rm (default: open, as the seed's were)"
    )
    dev.add_argument(
        "--membership-token",
        default="",
        help="bearer token for PUT /membership (default: a random one, printed at start)",
    )
    dev.add_argument("--log-dir", default="", help="write each process's log here")
    dev.add_argument(
        "--tls-cert",
        default="",
        metavar="FILE",
        help="PEM certificate chain: the balancer's port speaks only TLS (needs --tls-key); "
        "rewriting the files rotates the certificate without a restart",
    )
    dev.add_argument("--tls-key", default="", metavar="FILE", help="PEM private key of --tls-cert")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not 1 <= args.replicas <= naming.MAX_REPLICAS:
        sys.exit(f"--replicas must be between 1 and {naming.MAX_REPLICAS}")
    if bool(args.tls_cert) != bool(args.tls_key):
        sys.exit("ringlb dev: --tls-cert and --tls-key go together")
    if args.tls_cert and (error := tls.load_error(args.tls_cert, args.tls_key)):
        sys.exit(f"ringlb dev: {error}")
    if not 0 <= args.cache_size <= MAX_SIZE:
        sys.exit(f"ringlb dev: --cache-size must be 0 (off) to {MAX_SIZE}")
    if not 0 <= args.miss_cost_ms <= MAX_MISS_COST_MS:
        sys.exit(f"ringlb dev: --miss-cost-ms must be 0 to {MAX_MISS_COST_MS:g}")
    if not 0 <= args.warmup <= warmup.MAX_SECONDS:
        sys.exit(f"ringlb dev: --warmup must be 0 (off) to {warmup.MAX_SECONDS:g} seconds")
    if args.warmup and args.strategy not in WARMUP_STRATEGIES:
        sys.exit(f"ringlb dev: --warmup needs --strategy {' or '.join(WARMUP_STRATEGIES)}, not {args.strategy}")
    hashing = HashingConfig(args.strategy, args.table_size, args.vnodes, args.seed_formulas, args.bounded_load)
    try:
        hashing.validate()
        key = keys.parse(
            keys.KeyConfig(  # through the checks a pushed document gets
                args.key_source,
                args.key_name if args.key_source in keys.NAMED_SOURCES else "",
                args.key_index,
                tuple(keys.from_text(text) for text in args.key_fallback),
            ).to_json()
        )
        names = naming.desired_identities(args.replicas, args.hostnames)
        supervisor = Supervisor(
            LocalConfig(
                replicas=names,
                host=args.host,
                port=args.port,
                workers=args.workers,
                hashing=hashing,
                key=key,
                cache_size=args.cache_size,
                miss_cost_ms=args.miss_cost_ms,
                warmup_seconds=args.warmup,
                token=args.token,
                membership_token=args.membership_token,
                log_dir=args.log_dir,
                tls_cert=os.path.abspath(args.tls_cert) if args.tls_cert else "",
                tls_key=os.path.abspath(args.tls_key) if args.tls_key else "",
            )
        )
    except ValueError as exc:
        sys.exit(f"ringlb dev: {exc}")

    def stop(*_: Any) -> None:
        supervisor.stopping.set()

    def serving() -> None:
        print(f"ringlb: balancer on {supervisor.balancer_url} with {names}; Ctrl-C stops everything", flush=True)

    # Before the first child starts: a Ctrl-C at any moment from here on is a clean stop.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(
        f"ringlb: status page {supervisor.admin_url}/status; membership token {supervisor.membership_token}", flush=True
    )
    if not args.token:
        print(
            "ringlb: WARNING: /add and /rm are open to anyone who reaches this port "
            "(seed compatibility); pass --token to require a bearer token",
            flush=True,
        )
    supervisor.run(on_serving=serving)
    return 0


if __name__ == "__main__":
    sys.exit(main())
