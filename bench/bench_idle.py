"""What a running HDX application costs with no traffic: CPU by process over a window.

    bash scripts/quickstart.sh &                 # or any running cluster on this machine
    python -m bench.bench_idle --seconds 60 [--url http://127.0.0.1:8000]

Waits until ``/api/v1/ready`` answers, then ``--settle`` seconds more (start-up work,
a first autoscaling round), then reads every Ray process's CPU time (Ray's daemons and
helpers, HAProxy, every replica; ``bench.bench_serve.process_role``) before and after
the window and prints each as % of one core and the total. Nothing asserts: the
figure goes to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

from bench.bench_serve import cpu_seconds, cpu_spent
from bench.ready import wait_ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=30.0)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    args = parser.parse_args()
    wait_ready(args.url, 900)
    time.sleep(args.settle)
    before = cpu_seconds()
    time.sleep(args.seconds)
    spent = cpu_spent(before, cpu_seconds())
    spent.pop("load generator (this script)", None)
    total = sum(spent.values()) * 100 / args.seconds
    print(f"idle {args.seconds:.0f} s: {total:.2f} % of one core, {len(spent)} roles")
    for role, cpu in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {cpu * 100 / args.seconds:6.2f} %  {role}")


if __name__ == "__main__":
    main()
