#!/usr/bin/env python
"""Inject each known fault into the real code and print fault | expected | observed | verdict.

    python scripts/fault_check.py                # all faults (about a minute)
    python scripts/fault_check.py --only worker  # those whose name contains "worker"

Exit status 1 when any fault is not handled as expected. The checks live in eqflow.fault_check.
"""
import argparse
import sys

import torch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=None, help="run only faults whose name contains one of these")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from eqflow.fault_check import format_fault_table, run_fault_checks
    results = run_fault_checks(args.only, progress=lambda name: print(f"... {name}", file=sys.stderr))
    print(format_fault_table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
