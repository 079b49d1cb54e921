#!/usr/bin/env python3
"""Load generator for ringlb (and the seed system it replaces).

Sends N GET requests (default 10,000) to a URL (default http://127.0.0.1:5000/home) from
``--concurrency`` threads, each with its own ``requests.Session`` (keep-alive), every request
carrying a random 6-digit ``X-Request-ID`` as the seed's client did. It counts the answers per
replica (the ``Hello from Server: <id>`` message of the JSON body), failures by kind and latency
percentiles, and writes them as JSON (``--json``) and/or CSV (``--csv``).

Every run is bounded in count (``-n``) and in time (``--max-seconds``). The generator is
``ringlb_harness.load.run_load``; this is its command line.

    .venv/bin/python scripts/loadgen.py -n 10000 -c 8 --json out.json --csv out.csv
"""

from __future__ import annotations

import argparse
import sys

from ringlb_harness.load import DEFAULT_URL, format_summary, run_load, write_csv, write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=DEFAULT_URL, help=f"target (default {DEFAULT_URL})")
    parser.add_argument("-n", "--requests", type=int, default=10_000, help="request count (default 10000)")
    parser.add_argument("-c", "--concurrency", type=int, default=8, help="threads (default 8)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop after this long (default 120)")
    parser.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in s (default 5)")
    parser.add_argument("--rate", type=float, default=0.0, help="cap on total req/s (default: none)")
    parser.add_argument("--key-header", default="X-Request-ID", help="header carrying the key")
    parser.add_argument("--no-key", action="store_true", help="send no key header (balancer picks one)")
    parser.add_argument("--seed", type=int, default=None, help="RNG seed for reproducible keys")
    parser.add_argument("--json", help="write the summary as JSON here")
    parser.add_argument("--csv", help="write per-replica counts as CSV here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.requests < 0 or args.concurrency < 1 or args.max_seconds <= 0:
        parser.error("--requests must be >= 0, --concurrency >= 1, --max-seconds > 0")
    result = run_load(
        args.url,
        args.requests,
        args.concurrency,
        timeout=args.timeout,
        max_seconds=args.max_seconds,
        rate=args.rate,
        key_header=args.key_header,
        key_fn=(lambda rng, i: None) if args.no_key else None,
        seed=args.seed,
        progress=False if args.quiet else None,
    )
    print(format_summary(result))
    if args.json:
        write_json(result, args.json)
    if args.csv:
        write_csv(result, args.csv)
    return 0 if result.failed == 0 and result.sent > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
