"""Write assets/cifar10_sample.npz, the offline sample bundled with the app.

    python scripts/make_sample.py [../shared/cifar10/cifar10-jpeg.npz]

Picks 200 test images and 500 training images per class (stratified, seed 0) from the JPEG copy of
CIFAR-10 and stores their JPEG bytes unchanged (so the pixels are exactly those of the unpacked copy),
with labels and the indices they came from. The first 100 test images of each class form the app's
fixed eval subset.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from compression.data import SAMPLE_PATH, stratified_indices

ROOT = Path(__file__).resolve().parent.parent

PER_CLASS = {"train": 500, "test": 200}


def pick(store, split: str) -> dict[str, np.ndarray]:
    labels = store[f"{split}_labels"].astype(np.int64)
    index = stratified_indices(torch.from_numpy(labels), PER_CLASS[split], seed=0).numpy()
    jpeg, offsets = store[f"{split}_jpeg"], store[f"{split}_offsets"]
    chunks = [jpeg[offsets[i]:offsets[i + 1]] for i in index]
    return {f"{split}_jpeg": np.concatenate(chunks),
            f"{split}_offsets": np.concatenate([[0], np.cumsum([len(c) for c in chunks])]).astype(np.int64),
            f"{split}_labels": labels[index].astype(np.uint8),
            f"{split}_source_index": index.astype(np.int32)}


def main(source: str) -> None:
    store = np.load(source)
    arrays = {**pick(store, "train"), **pick(store, "test")}
    SAMPLE_PATH.parent.mkdir(exist_ok=True)
    np.savez_compressed(SAMPLE_PATH, **arrays)
    print(f"wrote {SAMPLE_PATH} ({SAMPLE_PATH.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT.parent / "shared" / "cifar10" / "cifar10-jpeg.npz"))
