"""Small things several test files use."""
import torch

from compression.data import ImageSet


def toy_set(n=256, seed=0):
    """A learnable toy task: the class is which tenth of the image (a band of columns) is brightest."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 60, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    for i, c in enumerate(labels.tolist()):
        images[i, :, :, 3 * c:3 * c + 3] = 255
    return ImageSet(images, labels, "toy")
