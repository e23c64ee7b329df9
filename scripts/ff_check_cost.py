"""What the non-finite check costs a step: the timing rows of ``bench ff`` (plain PyTorch, one Adam per
layer, our backprop and dni, their hand-written floors) with the core's check of every loss, ĝ, target
and parameter gradient as it is, and with it switched off (``first_nonfinite`` patched to find nothing:
for this measurement only; the framework has no such switch). JSON to OUT.

    OMP_NUM_THREADS=1 python scripts/ff_check_cost.py [--out OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dni_agents.core import interface, system
from dni_agents.drivers.ff.timing import PLAIN, PLAIN_LAYERS, time_methods

METHODS = [PLAIN, PLAIN_LAYERS, "backprop", "plain-dni", "dni"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report: dict = {"script": "scripts/ff_check_cost.py", "rows": []}
    checked = system.first_nonfinite, interface.first_nonfinite
    for check in (True, False):
        if not check:
            system.first_nonfinite = interface.first_nonfinite = lambda tensors: None
        try:
            for batch_norm in (True, False):
                rows = time_methods(METHODS, steps=20, repeats=15, batch_norm=batch_norm)
                for r in rows:
                    r["nonfinite_check"] = check
                report["rows"] += rows
                print(f"check {'on ' if check else 'off'} batch-norm {'yes' if batch_norm else 'no '}: "
                      + ", ".join(f"{r['method']} {r['cost_vs_plain']:.3f}" for r in rows))
        finally:
            system.first_nonfinite, interface.first_nonfinite = checked
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
