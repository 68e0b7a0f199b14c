#!/usr/bin/env python
"""Summarize an alanine dipeptide MD reference: frames, basin populations, ΔF, Ramachandran plot.

    python scripts/analyze_md.py data_cache/ala2_implicit_300K.h5 --plot data_cache/ala2_implicit_300K.png
"""
from __future__ import annotations

import argparse
import json
import sys

from eqflow.evaluation.ramachandran import delta_f, mode_populations, phi_psi, plot_ramachandran
from eqflow.evaluation.trajectory import load_md_reference


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trajectory")
    p.add_argument("--plot", help="PNG path for the Ramachandran map")
    p.add_argument("--n-bootstrap", type=int, default=200)
    p.add_argument("--block", type=int, default=200,
                   help="block length (frames) of the moving-block bootstrap for correlated frames")
    p.add_argument("--json", help="also write the summary here")
    a = p.parse_args(argv)

    ref = load_md_reference(a.trajectory)
    phi, psi = phi_psi(ref.positions)
    pops = mode_populations(phi, psi, n_bootstrap=a.n_bootstrap, block=a.block)
    df, df_err = delta_f(phi, n_bootstrap=a.n_bootstrap, block=a.block)
    _, df_err_iid = delta_f(phi, n_bootstrap=a.n_bootstrap)
    summary = dict(trajectory=a.trajectory, n_frames=len(ref),
                   temperature=ref.meta.get("temperature"), temperatures=ref.meta.get("temperatures"),
                   exchange_acceptance=ref.meta.get("exchange_acceptance"),
                   populations={k: {"p": v[0], "std": v[1]} for k, v in pops.items()},
                   delta_f_kT={"value": df, "std": df_err, "std_iid_bootstrap": df_err_iid},
                   bootstrap=f"moving-block bootstrap, block {a.block} frames, {a.n_bootstrap} resamples")
    print(f"{a.trajectory}: {len(ref)} frames at {ref.meta.get('temperature')} K")
    for k, (v, s) in pops.items():
        print(f"  P({k:9s}) = {v:.4f} ± {s:.4f}")
    print(f"  ΔF = -ln P(phi>0)/P(phi<0) = {df:.3f} ± {df_err:.3f} kT "
          f"(block bootstrap, {a.block} frames; iid bootstrap: ± {df_err_iid:.3f})")
    if a.plot:
        plot_ramachandran({"reference MD": (phi, psi, None)}, a.plot)
        print(f"  plot: {a.plot}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(summary, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
