"""Pretrain ``nets.py:Net`` on public digits, without DP; write ``backbone.pt``.

The public data: the digits 0-4 of a fixed, stratified 30 % of scikit-learn's
bundled 8x8 digits (``load_digits``, shipped inside the scikit-learn wheel;
nothing is downloaded), split off with seed 0 and held only by the "public"
side. The other 70 % is the clients' side, all ten digits: this script writes
it, untouched by the pretraining, as ``digits-clients.npz`` (images, shape
``(n, 1, 8, 8)``) and ``digits-clients.csv`` (64 pixel columns and a label
``y``) for ``fedge simulate --data``. The two sides share no image, and the
public side has never seen a 5-9: its model alone cannot solve the clients'
task (it scores about half), so the clients must train. Both sides come from
the same writers' distribution, which makes the backbone's features fit better
than public data of another source would.

``backbone.pt`` holds the whole ``Net`` state_dict (``initial-weights`` must
name every parameter) with the head set to zero: the public head answers the
public task, digits 0-4, with confident logits the clients' task would first
have to unlearn. A zero classifier is where DP fine-tuning starts best (De et
al. 2022, "Unlocking high-accuracy differentially private image
classification through scale").

Pixels are divided by 16, the scale fedge's image encoding fits on the digits
(their largest value), so the backbone sees what the clients' ``.npz`` gives it.
The CSV's columns are standardised by fedge instead; the CSV is for the
end-to-end chain, not for the figures.

Run: ``python examples/pretrain_public.py`` (seconds on a CPU); writes into
``examples/out/`` unless ``--out DIR``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

# nets.py sits beside this script, whose folder Python puts on sys.path.
from nets import Net
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

OUT_DIR = Path(__file__).resolve().parent / "out"
PUBLIC_FRACTION = 0.3
SPLIT_SEED = 0
PUBLIC_CLASSES = (0, 1, 2, 3, 4)  # the public side's task: half the digits
PIXEL_SCALE = 16.0  # the digits' largest pixel value: fedge's image encoding


def split_public(
    *, public_fraction: float = PUBLIC_FRACTION
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Return ``(public, clients)``: the digits split once, stratified, seed 0.

    Each side is ``(images, labels)`` with images of shape ``(n, 1, 8, 8)`` in
    the raw 0-16 pixel values; the public side keeps only
    :data:`PUBLIC_CLASSES`, the rest of its share is held by no one.
    """
    digits = load_digits()
    images = digits.images.astype(np.float32)[:, None, :, :]
    public_x, clients_x, public_y, clients_y = train_test_split(
        images,
        digits.target,
        train_size=public_fraction,
        stratify=digits.target,
        random_state=SPLIT_SEED,
    )
    public = np.isin(public_y, PUBLIC_CLASSES)
    return (public_x[public], public_y[public]), (clients_x, clients_y)


def write_clients_data(images: np.ndarray, labels: np.ndarray, out: Path) -> None:
    """Write the clients' side as ``digits-clients.npz`` and ``digits-clients.csv``."""
    np.savez(out / "digits-clients.npz", x=images, y=labels)
    table = pd.DataFrame(
        images.reshape(len(images), -1), columns=[f"p{i}" for i in range(64)]
    )
    table["y"] = labels
    table.to_csv(out / "digits-clients.csv", index=False)


def pretrain(
    images: np.ndarray, labels: np.ndarray, *, epochs: int, seed: int
) -> tuple[Net, float]:
    """Train a fresh ``Net`` on the public digits with Adam; return it and its accuracy.

    The accuracy is on the public digits themselves (the public side holds no
    other data); the clients' held-out digits measure the model in the study.
    """
    torch.manual_seed(seed)
    x = torch.from_numpy(images / PIXEL_SCALE)
    y = torch.from_numpy(labels).long()
    model = Net(input_shape=(1, 8, 8), num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(x)).split(32):
            optimizer.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    return model, accuracy


def main(argv: list[str] | None = None) -> int:
    """Split the digits, write the clients' side, pretrain, save ``backbone.pt``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    parser.add_argument("--epochs", type=int, default=40, help="default: 40")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (public_x, public_y), (clients_x, clients_y) = split_public()
    write_clients_data(clients_x, clients_y, args.out)
    model, accuracy = pretrain(public_x, public_y, epochs=args.epochs, seed=args.seed)
    with torch.no_grad():  # the clients' task gets a head of its own
        model.head.weight.zero_()
        model.head.bias.zero_()
    torch.save(model.state_dict(), args.out / "backbone.pt")
    print(
        f"pretrained on {len(public_x)} public digits 0-4 ({args.epochs} epochs): "
        f"accuracy {accuracy:.3f} on them; wrote (head zeroed) {args.out / 'backbone.pt'}; "
        f"the clients' {len(clients_x)} digits in {args.out / 'digits-clients.npz'}"
        f" and .csv"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
