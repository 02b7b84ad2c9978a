"""CIFAR-10 as whole uint8 tensors, with batched augmentation.

The official "python version" archive is a tarball of pickled dicts, one per batch of 10,000 images
(`data`: 10000 x 3072 uint8, the R, G and B planes of each 32x32 image one after another;
`labels`: a list of ints). We read it with the standard library and keep each split as one
(N, 3, 32, 32) uint8 tensor: 150 MB for the training set, and no per-image Python work afterwards.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILES = ("test_batch",)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = PROJECT_ROOT / "data"
SAMPLE_PATH = PROJECT_ROOT / "assets" / "cifar10_sample.npz"


class DataError(RuntimeError):
    """Data is missing or damaged. The message names the file and says what to do."""


@dataclass
class ImageSet:
    """A split of images: `images` (N, 3, 32, 32) uint8, `labels` (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str = ""
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor | slice, name: str | None = None) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index], name or self.name)

    def fingerprint(self) -> str:
        """A digest of the images and labels (BLAKE2b, 128 bits): two sets with the same fingerprint hold
        the same data, whatever their names. Computed once per ImageSet (about 3 ms for 1,000 images);
        the tensors must not be modified afterwards."""
        if self._fingerprint is None:
            digest = hashlib.blake2b(digest_size=16)
            for t in (self.images, self.labels):
                digest.update(str((t.dtype, tuple(t.shape))).encode())
                digest.update(memoryview(t.contiguous().numpy()).cast("B"))
            self._fingerprint = digest.hexdigest()
        return self._fingerprint


def resolve_root(data: str | os.PathLike | None = None) -> Path:
    """The data folder: `data` if given, else $CIFAR10_ROOT, else ./data in the project."""
    if data:
        return Path(data)
    if os.environ.get("CIFAR10_ROOT"):
        return Path(os.environ["CIFAR10_ROOT"])
    return DEFAULT_DATA_DIR


def batches_dir(root: str | os.PathLike | None = None) -> Path:
    """Find `cifar-10-batches-py/` in `root` (or accept `root` being that folder itself)."""
    root = resolve_root(root)
    if root.name == FOLDER and root.is_dir():
        return root
    return root / FOLDER


def checked_folder(root: str | os.PathLike | None, allowed: list[str] | None = None) -> Path:
    """The real path (links followed) of the `cifar-10-batches-py/` folder in `root`; with `allowed`,
    it must lie inside one of those folders, else DataError."""
    folder = batches_dir(root).resolve()
    if allowed is not None and not any(folder.is_relative_to(Path(a).expanduser().resolve()) for a in allowed):
        raise DataError(f"{root} is outside the folders this server opens to visitors.")
    return folder


def has_cifar10(root: str | os.PathLike | None = None) -> bool:
    folder = batches_dir(root)
    return all((folder / f).is_file() for f in TRAIN_FILES + TEST_FILES)


BATCH_IMAGES = 10_000          # every official batch file holds 10,000 images
MAX_BATCH_BYTES = 40_000_000   # an official batch file is 30.7 MB


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file's (images (N, 3, 32, 32) uint8, labels (N,) int64), checked against CIFAR's real
    shapes before any array is built from it: a pickle can describe a huge array in a few bytes."""
    advice = "Delete the folder and download CIFAR-10 again, or point --data / CIFAR10_ROOT elsewhere."
    if not path.is_file():
        raise DataError(f"{path} is missing. Download CIFAR-10 (python version) into "
                        f"{path.parent.parent}, or point --data / CIFAR10_ROOT at a folder that has it.")
    if path.stat().st_size > MAX_BATCH_BYTES:
        raise DataError(f"{path} is {path.stat().st_size / 1e6:.0f} MB, larger than a CIFAR-10 batch "
                        f"(31 MB). {advice}")
    try:
        with open(path, "rb") as fh:
            batch = _SafeUnpickler(fh, encoding="latin1").load()
    except DataError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise DataError(f"{path} could not be read ({type(exc).__name__}). {advice}") from None
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DataError(f"{path} is not a CIFAR-10 batch (no 'data' and 'labels' entries). {advice}")
    data, labels = batch["data"], batch["labels"]
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072
            or not 0 < data.shape[0] <= BATCH_IMAGES):
        shown = f"{data.shape} {data.dtype}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' should be an array of N x 3072 uint8 pixels (N up to {BATCH_IMAGES:,}), "
                        f"found {shown}. {advice}")
    return data.reshape(-1, 3, 32, 32), _check_labels(labels, data.shape[0], path, advice)


def _check_labels(labels, n: int, path: Path, advice: str) -> np.ndarray:
    """The batch's labels as int64, if they are n whole numbers 0…9 (a list, as in the official files,
    or an integer array)."""
    count = len(labels) if isinstance(labels, (list, tuple)) else getattr(labels, "shape", None)
    if count not in (n, (n,)):
        raise DataError(f"{path}: {n} images but {count if isinstance(count, int) else 'no list of'} labels. {advice}")
    if isinstance(labels, np.ndarray):
        ok = np.issubdtype(labels.dtype, np.integer)
    else:
        ok = all(type(x) is int for x in labels)
    if not ok:
        raise DataError(f"{path}: 'labels' should be {n:,} whole numbers (one per image). {advice}")
    try:
        labels = np.asarray(labels).astype(np.int64)
    except (OverflowError, TypeError, ValueError):   # integers beyond 64 bits
        raise DataError(f"{path}: labels must be 0..9, found larger numbers. {advice}") from None
    if labels.min() < 0 or labels.max() >= len(CLASSES):
        raise DataError(f"{path}: labels must be 0..9, found {labels.min()}..{labels.max()}. {advice}")
    return labels


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds: containers, strings, numbers and numpy arrays.

    A pickle can name any callable to run at load time; this one refuses every global except the
    numpy functions that rebuild an array and `_codecs.encode`, which Python 3 uses for bytes in
    protocol-2 pickles.
    """

    ALLOWED = {("_codecs", "encode"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise DataError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds only arrays")
        return super().find_class(module, name)


def load_cifar10(root: str | os.PathLike | None = None, split: str = "train") -> ImageSet:
    """Read the train (50,000) or test (10,000) split from the official python layout."""
    if split not in ("train", "test"):
        raise ValueError("split must be 'train' or 'test'")
    folder = batches_dir(root)
    if not folder.is_dir():
        raise DataError(f"no CIFAR-10 folder at {folder}. Download it (python -m compression download), "
                        f"or point --data / CIFAR10_ROOT at the folder that holds {FOLDER}/.")
    parts = [_read_batch(folder / f) for f in (TRAIN_FILES if split == "train" else TEST_FILES)]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts]))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return ImageSet(images, labels, f"CIFAR-10 {split}")


def decode_jpegs(jpeg: np.ndarray, offsets: np.ndarray) -> torch.Tensor:
    """Decode concatenated JPEG files into an (N, 3, 32, 32) uint8 tensor."""
    from PIL import Image

    images = np.empty((len(offsets) - 1, 32, 32, 3), dtype=np.uint8)
    for i in range(len(offsets) - 1):
        with Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())) as im:
            images[i] = np.asarray(im.convert("RGB"))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def load_sample(path: str | os.PathLike = SAMPLE_PATH, splits: tuple[str, ...] = ("train", "test")):
    """The bundled offline sample (see assets/README.md): (train, test) ImageSets, or one ImageSet
    when `splits` names one split.

    5,000 training and 2,000 test images, stratified, stored as the JPEG bytes of the source copy.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"the bundled sample {path} is missing; restore it with git checkout -- {path}.")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = [ImageSet(decode_jpegs(z[f"{s}_jpeg"], z[f"{s}_offsets"]),
                            torch.from_numpy(z[f"{s}_labels"].astype(np.int64)), f"sample {s}") for s in splits]
    except Exception as exc:
        raise DataError(f"{path} could not be read ({type(exc).__name__}: {exc}); "
                        f"restore it with git checkout -- {path}.") from None
    return out[0] if len(out) == 1 else tuple(out)


def stratified_indices(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """`per_class` indices of each class, picked at random under `seed`, in ascending order."""
    g = torch.Generator().manual_seed(seed)
    picks = []
    for c in range(int(labels.max()) + 1):
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < per_class:
            raise DataError(f"class {CLASSES[c]} has only {len(idx)} images, {per_class} asked for")
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return torch.cat(picks).sort().values


EVAL_PER_CLASS = 100


def eval_subset(sample_test: ImageSet, per_class: int = EVAL_PER_CLASS) -> ImageSet:
    """The fixed eval subset for live accuracy: the first `per_class` images of each class of the
    bundled sample's test images. Bundled, so every laptop in a class sees the same numbers."""
    index = torch.cat([torch.nonzero(sample_test.labels == c).flatten()[:per_class]
                       for c in range(len(CLASSES))]).sort().values
    return sample_test.subset(index, f"eval subset ({per_class} per class)")


def calibration_set(train: ImageSet, n: int) -> ImageSet:
    """The last `n` training images: where the automatic modes measure sensitivity (never test images)."""
    return train.subset(slice(max(0, len(train) - n), len(train)), "calibration")


def calibration_batches(data: ImageSet, batches: int, batch_size: int) -> Iterator[ImageSet]:
    """`batches` batches from the start of `data`, wrapping around when it is short: batch i is
    data[s : s + batch_size] with s = i · batch_size mod len(data) (calibration, gradient scores)."""
    if len(data) == 0:
        raise ValueError("calibration needs at least one image")
    for i in range(batches):
        start = i * batch_size % len(data)
        yield data.subset(slice(start, start + batch_size))


# --- download ----------------------------------------------------------------------------------------

def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_cifar10(root: str | os.PathLike | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     url: str = ARCHIVE_URL, md5: str = ARCHIVE_MD5) -> Path:
    """Download the official archive into `root`, check its md5, unpack it; returns the batches folder.

    `progress(done_bytes, total_bytes)` is called as the download goes (total is 0 when unknown).
    """
    root = resolve_root(root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / ARCHIVE_NAME
    partial = archive.with_suffix(".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while block := response.read(1 << 16):
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise DataError(f"could not download {url} ({exc}). Check the internet connection, or copy "
                        f"{ARCHIVE_NAME} into {root} by hand.") from None
    got = md5sum(partial)
    if got != md5:
        partial.unlink(missing_ok=True)
        raise DataError(f"{archive} failed its checksum (md5 {got}, expected {md5}): the download is "
                        f"damaged. Try again.")
    partial.replace(archive)
    extract_archive(archive, root)
    return root / FOLDER


def extract_archive(archive: Path, root: Path) -> None:
    """Unpack only the expected batch files, refusing links and paths that leave `root`."""
    wanted = {f"{FOLDER}/{f}" for f in TRAIN_FILES + TEST_FILES + ("batches.meta",)}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name in wanted and m.isfile()]
            tar.extractall(root, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive} could not be unpacked ({exc}). Delete it and download again.") from None


# --- augmentation -------------------------------------------------------------------------------------

def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, 32, 32) -> float32 in [0, 1]. Models normalise internally."""
    return images.float().div_(255.0)


def augment(images: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding by `pad`, and a random horizontal flip: a whole batch at once.

    Works on any dtype and on the tensor's own device; one gather instead of N little crops.
    """
    n, c, h, w = images.shape
    device = images.device
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(device)
    flip = torch.rand(n, generator=generator).to(device) < 0.5
    rows = dy[:, None] + torch.arange(h, device=device)[None, :]                      # (n, h)
    cols = dx[:, None] + torch.arange(w, device=device)[None, :]                      # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=device)[:, None, None, None]
    chans = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


MEAN_PIXEL = (125, 123, 114)    # CIFAR-10's mean colour: 0 after the model's normalisation


def cutout(images: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017): paint one size × size square per image, centred anywhere (it may
    hang over the edge), in the mean colour. A whole uint8 batch at once; returns a new tensor."""
    n, c, h, w = images.shape
    device = images.device
    cy = torch.randint(0, h, (n,), generator=generator).to(device)[:, None, None]
    cx = torch.randint(0, w, (n,), generator=generator).to(device)[:, None, None]
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    top, left = cy - size // 2, cx - size // 2
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)   # (n, h, w)
    fill = torch.tensor(MEAN_PIXEL, dtype=images.dtype, device=device)[None, :, None, None]
    return torch.where(inside[:, None], fill, images)
