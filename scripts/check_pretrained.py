#!/usr/bin/env python
"""Re-evaluate shipped models and compare with their summary.json (ESS, NLL, energy W1, ΔF(phi), ...).

    python scripts/check_pretrained.py                         # every model in pretrained/
    python scripts/check_pretrained.py pretrained/dw4 --n-samples 2000
    python scripts/check_pretrained.py pretrained/ala2_implicit --device cuda   # exact log q: use a GPU
    python scripts/check_pretrained.py pretrained/ala2_implicit --divergence hutchinson  # CPU: log q metrics skipped

By default each model is evaluated with its summary's settings (number of samples, divergence of
log q) on its config's reference (--reference to point elsewhere). A metric passes when the two
numbers agree within its tolerance (eqflow.pretrained.CHECKED_METRICS: absolute + relative, 3
bootstrap errors for ΔF, 3 binomial errors for P(phi>0); --scale widens them all). Exit status 1
when any compared metric differs.
"""
import argparse
import sys

from eqflow.cli import run_cli
from eqflow.errors import EqflowError
from eqflow.pretrained import check_pretrained, format_check, list_pretrained


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="model folders (default: every pretrained/*/)")
    p.add_argument("--reference", default=None, help="reference file (default: the model config's target.reference)")
    p.add_argument("--n-samples", type=int, default=None, help="model samples (default: the summary's n_samples)")
    p.add_argument("--divergence", choices=["exact", "hutchinson", "auto"], default=None,
                   help="log q divergence (default: the summary's eval_divergence)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=float, default=1.0, help="multiply every tolerance")
    args = p.parse_args(argv)
    models = args.models or [str(m) for m in list_pretrained()]
    if not models:
        raise EqflowError("no models: pretrained/ holds none and none were named")
    failed = []
    for m in models:
        rows, fresh = check_pretrained(m, reference=args.reference, n_samples=args.n_samples,
                                       divergence=args.divergence, device=args.device, seed=args.seed,
                                       scale=args.scale)
        print(format_check(rows, f"{m}: shipped summary vs now ({fresh['n_samples']} samples, "
                                 f"log q by {fresh.get('eval_divergence')})"), flush=True)
        if any(r[-1] == "DIFFERS" for r in rows) or not rows:
            failed.append(m)
    if failed:
        print(f"not reproduced: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
