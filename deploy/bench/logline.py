"""What the log line per delivery costs: ``logging`` as codat-hooks configures it, against a
bare ``print`` of the same JSON to the same file.

    .venv/bin/python deploy/bench/logline.py [--lines 50000] [--runs 5] [--to /dev/null]

Each run writes ``--lines`` lines of the receiver's shape (its fields, a transition, the
outcome) through ``codat_hooks.receiver``'s logger at INFO, with the service's JSON formatter,
to ``--to``; and the same number of ``orjson``-encoded dicts with ``print(..., flush=True)``
(the bare way to write a JSON line). It prints the median µs per line of each, and the
difference: what the logging setup costs beyond writing the line at all.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import orjson

from service.ingest import Disposition, Outcome
from service.logs import configure_logging, get_logger

FIELDS = {"message_id": "msg_2pXG8lTqMN0aBcDeFgHiJkLmNoP",
          "event_id": "7e1f6a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
          "event_type": "connection.connected",
          "company_id": "0b6c0c2e-5a4f-4c2e-9b1e-2f7c8d9e0a1b",
          "connection_id": "51baa045-4836-4317-a142-e5a4c2a9a5b1"}


def one_line() -> dict[str, object]:
    return {**FIELDS, "outcome": Outcome.PROCESSED, "disposition": Disposition.STORED,
            "transitions": [{"from": "PendingAuth", "to": "Linked", "result": "applied",
                             "skipped": False}],
            "jobs": 1, "status": 200, "duration_ms": 1.234}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=50_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--to", default="/dev/null", help="where the lines go (a file or device)")
    args = p.parse_args()
    out = open(args.to, "w")  # noqa: SIM115 - held for the whole benchmark
    configure_logging("INFO", json=True, stream=out)
    log = get_logger("receiver")
    logged, printed = [], []
    for _ in range(args.runs):
        started = time.perf_counter()
        for _ in range(args.lines):
            log.info("delivery", extra={"fields": one_line()})
        logged.append((time.perf_counter() - started) / args.lines * 1e6)
        started = time.perf_counter()
        for _ in range(args.lines):
            print(orjson.dumps({"msg": "delivery", **one_line()}).decode(), file=out,
                  flush=True)
        printed.append((time.perf_counter() - started) / args.lines * 1e6)
    log_us, print_us = statistics.median(logged), statistics.median(printed)
    print(f"log line through codat-hooks' logging: {log_us:.1f} µs (median of {args.runs} runs "
          f"of {args.lines:,} lines to {args.to})")
    print(f"bare print of the same JSON line:      {print_us:.1f} µs")
    print(f"what the logging setup adds:           {log_us - print_us:.1f} µs")


if __name__ == "__main__":
    main()
