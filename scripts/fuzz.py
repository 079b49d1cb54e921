#!/usr/bin/env python3
"""The long request-path fuzz (``make fuzz``; minutes, not in CI).

Starts a test backend and the balancer (one worker, as the image runs it) on loopback, then runs
the property of tests/integration/test_fuzz.py with hypothesis for ``--seconds`` (default 300):
no worker crash, no hang, every answer a well-formed HTTP/1.1 response (h11 as the client-side
parser). Bounded in count (``--examples``) and time; every process is stopped by its PID.

    .venv/bin/python scripts/fuzz.py --seconds 600
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from ringlb_harness.backends.main import MainBackend
from ringlb_harness.balancer import Balancer
from ringlb_harness.fuzzing import check_one, run_for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="time budget (default 300)")
    parser.add_argument("--examples", type=int, default=200_000, help="at most this many connections")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the balancer on the way out
    outcomes: Counter[str] = Counter()
    backend = MainBackend().start()
    with tempfile.TemporaryDirectory(prefix="ringlb-fuzz-") as tmp:
        balancer = Balancer(
            Path(tmp), env={"RINGLB_HEAD_TIMEOUT": "2", "RINGLB_FIRST_BYTE_TIMEOUT": "2", "RINGLB_MAX_BODY": "4096"}
        )
        try:
            balancer.push([("fuzz", backend.port)])
            start = time.monotonic()
            last_report = [start]

            def example(data: bytes, splits: list[int]) -> None:
                outcomes[check_one(balancer.port, data, splits).split(" ")[0]] += 1
                balancer.assert_workers_unchanged()
                now = time.monotonic()
                if now - last_report[0] > 10:
                    last_report[0] = now
                    print(
                        f"[{now - start:5.0f} s] {sum(outcomes.values())} connections: {dict(outcomes.most_common(8))}",
                        flush=True,
                    )

            try:
                run_for(args.seconds, example, batch=200, max_examples=args.examples)
            except AssertionError as exc:
                print(f"FAILED: {exc}\nbalancer log tail:\n{balancer.log_tail(30)}", file=sys.stderr)
                return 1
        finally:
            balancer.stop()
            backend.stop()
    print(
        f"fuzz: {sum(outcomes.values())} connections, no crash, no hang, every answer well-formed: "
        f"{dict(outcomes.most_common(12))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
