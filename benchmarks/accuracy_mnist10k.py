"""A longer SNN run on the embedded digits, beside its ANN twin, on the same split.

    python benchmarks/accuracy_mnist10k.py [--epochs 30] [--seed 0] [--precision fp32|bf16|auto]
                                           [--config demo-deep] [--rotate 10 --scale 0.1]

SNN: `stbp train --config demo-deep` (the demo's recipe on a 6-layer net; `--config demo`
for the demo's own net, or another config on the digits) for `--epochs` epochs: Algorithm 2
with the rate MSE loss on votes.
ANN twin: `baselines.ANNTwin`, the same layers with ReLU instead of LIF, the output averaged
per class, fed each image once (T = 1), cross-entropy, no dropout; the same optimizer,
schedule, batch size, augmentation, precision, seed and training samples (the seeded 8,000 /
2,000 split, less the SNN's validation part).
`--rotate`/`--scale` add random rotations and zooms to the shifts (for both), `--dropout` sets
the SNN's dropout after the hidden FC layer.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from baselines import ANNTwin  # benchmarks/baselines.py: the speed benchmark's twin
from torch import nn

from stbp.config import DataSettings, ModelSettings, load_config, merge
from stbp.data.mnist10k import random_affine, random_shift
from stbp.datasets import make_splits
from stbp.devices import autocast, resolve_precision
from stbp.runs import run_training
from stbp.train import make_model


def train_ann(config: dict, epochs: int, seed: int) -> tuple[float, float]:
    torch.manual_seed(seed)
    data, device = config["data"], torch.device("cpu")
    splits = make_splits(DataSettings(**data))
    train, test = splits.train_set, splits.test_set
    no_dropout = ModelSettings(**merge(config, {"model": {"dropout": 0.0}})["model"])
    model = ANNTwin(make_model(no_dropout, data["T"], (1, 28, 28)))
    for m in model.modules():  # PyTorch's default init: ReLU nets need no threshold scaling
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    batch, lr = config["optim"]["batch_size"], config["optim"]["lr"]
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    steps = epochs * math.ceil(len(splits.train) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    precision = config["run"]["precision"]
    start = time.time()
    for _ in range(epochs):
        model.train()
        for idx in splits.train[torch.randperm(len(splits.train))].split(batch):
            x = train.images[idx]
            if data["augment_rotate"] or data["augment_scale"]:
                x = random_affine(x, data["augment_rotate"], data["augment_scale"])
            x = random_shift(x, data["augment_shift"])
            with autocast(device, precision):
                scores = model(x.unsqueeze(0))
            loss = nn.functional.cross_entropy(scores.float(), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad(), autocast(device, precision):
        accuracy = (model(test.images.unsqueeze(0)).argmax(1) == test.labels).float().mean()
    return float(accuracy), time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo-deep", help="a config on the digits")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision", choices=["fp32", "bf16", "auto"], help="default: the config's"
    )
    parser.add_argument("--rotate", type=float, default=0.0, help="degrees (default 0)")
    parser.add_argument("--scale", type=float, default=0.0, help="zoom range (default 0)")
    parser.add_argument("--dropout", type=float, help="SNN dropout (default: the config's)")
    parser.add_argument("--out", help="run folder (default runs/<config>-<timestamp>)")
    args = parser.parse_args()
    config = load_config(args.config)
    run, data = config["run"], config["data"]
    run["seed"] = args.seed
    run["epochs"] = args.epochs
    precision = args.precision or run["precision"]
    run["precision"] = resolve_precision(precision, torch.device("cpu"))
    data["augment_rotate"], data["augment_scale"] = args.rotate, args.scale
    if args.dropout is not None:
        config["model"]["dropout"] = args.dropout
    snn = run_training(config, out=args.out)
    ann_acc, ann_seconds = train_ann(config, run["epochs"], args.seed)
    net = config["model"]["spec"] or config["model"]["network"]
    split = snn["split"]
    print(f"split: embedded MNIST, seeded {split['train']}/{split['val']}/{split['test']} "
          f"train/val/test (split seed {data['split_seed']})")
    print(f"augmentation: shift {data['augment_shift']} px, rotate {args.rotate} deg, "
          f"scale {args.scale}; SNN dropout {config['model']['dropout']}; {run['precision']}")
    print(f"SNN  {net} T={data['T']}, {run['epochs']} epochs: test "
          f"{snn['test_acc_at_selection']:.2%} at the epoch of best {snn['selection']} accuracy "
          f"({snn['selected_epoch']}), final {snn['final_test_acc']:.2%}, "
          f"{snn['total_seconds']:.0f} s, seed {args.seed}")
    print(f"ANN twin: final test {ann_acc:.2%}, {ann_seconds:.0f} s, seed {args.seed}")


if __name__ == "__main__":
    main()
