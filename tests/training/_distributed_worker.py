"""Run by tests/training/test_distributed.py under torchrun (2 ranks, gloo): checks that need every rank."""
import json
import sys

import torch

from eqflow import distributed as dd
from eqflow.builders import build_flow, build_target
from eqflow.config import config_from_dict
from eqflow.evaluation.metrics import ess
from eqflow.training import Trainer


def main(out_path):
    torch.set_num_threads(1)
    info = dd.init_distributed("cpu")
    cfg = config_from_dict({
        "target": {"name": "dw4", "reference": None},
        "field": {"hidden": 8, "n_layers": 2},
        "flow": {"solver": "rk4", "n_steps": 2, "base_scale": 2.0},
        "train": {"steps": 4, "batch_size": 16, "lr": 1e-2, "lr_schedule": "constant"},
    })
    torch.manual_seed(100 + info.rank)  # different initial parameters on purpose: the Trainer must fix that
    target = build_target(cfg)
    tr = Trainer(build_flow(cfg, target), target, cfg.train, out_dir=f"{out_path}.run", progress=False)
    max_diff, local_kl = [], []
    for _ in range(cfg.train.steps):
        rec = tr.train_step()
        flat = torch.cat([p.detach().reshape(-1) for p in tr.model.parameters()])
        both = dd.all_gather_cat(flat[None])
        max_diff.append(float((both[0] - both[1]).abs().max()))
        local_kl.append(float(tr.compute_loss()[1]["kl"]))  # this rank's own samples
    kl_both = dd.all_gather_cat(torch.tensor([local_kl]))
    # Distributed ESS (gathered log weights) equals the single-process ESS of the same samples.
    log_w = torch.linspace(-3.0, 1.0, 101, dtype=torch.float64) ** 2 / -2
    shard = torch.tensor_split(log_w, info.world_size)[info.rank]
    ess_gathered = ess(dd.all_gather_cat(shard).numpy())
    if info.is_main:
        json.dump({"world": info.world_size, "max_param_diff": max_diff,
                   "ranks_draw_different_samples": bool((kl_both[0] != kl_both[1]).any()),
                   "ess_gathered": ess_gathered, "ess_single": ess(log_w.numpy()),
                   "logged_dropped": rec["dropped"]}, open(out_path, "w"))
    dd.close_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
