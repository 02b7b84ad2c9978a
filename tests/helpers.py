"""Small things several test files use."""
import torch

from compression.data import ImageSet
from compression.models import create_model


def toy_set(n=256, seed=0):
    """A learnable toy task: the class is which tenth of the image (a band of columns) is brightest."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 60, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    for i, c in enumerate(labels.tolist()):
        images[i, :, :, 3 * c:3 * c + 3] = 255
    return ImageSet(images, labels, "toy")


def confident_model(arch="resnet8", width=0.25, seed=0):
    """An untrained model with confident, varied answers, as a trained one gives: every residual branch
    switched on (its last BN scale 1 instead of 0) and the classifier's weights scaled up."""
    torch.manual_seed(seed)
    model = create_model(arch, width=width)
    with torch.no_grad():
        for block in (m for m in model.modules() if hasattr(m, "bn2")):
            block.bn2.weight.fill_(1.0)
        model.fc.weight.mul_(40)
    return model.eval()


def on_grid(w, bits, per_channel):
    """Every value is an integer multiple of the symmetric step s = max|w| / (2^(b−1) − 1), per output
    channel or per tensor, within the grid's range."""
    qmax = 2 ** (bits - 1) - 1
    rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
    q = rows / (rows.abs().amax(dim=1, keepdim=True) / qmax)
    return bool(torch.allclose(q, q.round(), atol=1e-3) and q.abs().max() <= qmax + 1e-3)
