import pickle

import numpy as np
import pytest
import torch

from compression import data as D


def write_batch(path, n=20, data=None, labels=None):
    rng = np.random.default_rng(0)
    batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8) if data is None else data,
             "labels": [int(v) for v in rng.integers(0, 10, n)] if labels is None else labels}
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=2)


@pytest.fixture
def fake_root(tmp_path):
    folder = tmp_path / D.FOLDER
    folder.mkdir()
    for name in D.TRAIN_FILES + D.TEST_FILES:
        write_batch(folder / name)
    return tmp_path


def test_reads_official_layout(fake_root):
    train = D.load_cifar10(fake_root, "train")
    test = D.load_cifar10(fake_root, "test")
    assert train.images.shape == (100, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.labels.dtype == torch.int64 and len(test) == 20


def test_pixels_are_rgb_planes(fake_root):
    row = np.arange(3072) % 256
    write_batch(fake_root / D.FOLDER / "test_batch", n=1, data=row[None].astype(np.uint8), labels=[3])
    image = D.load_cifar10(fake_root, "test").images[0]
    assert image[0, 0, 0] == 0 and image[1, 0, 0] == 1024 % 256 and image[0, 0, 1] == 1


def test_missing_folder_names_it_and_says_what_to_do(tmp_path):
    with pytest.raises(D.DataError, match="no CIFAR-10 folder.*Download"):
        D.load_cifar10(tmp_path / "nowhere")


def test_missing_batch_file_is_named(fake_root):
    (fake_root / D.FOLDER / "data_batch_3").unlink()
    with pytest.raises(D.DataError, match="data_batch_3 is missing"):
        D.load_cifar10(fake_root, "train")


def test_truncated_pickle(fake_root):
    path = fake_root / D.FOLDER / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(D.DataError, match="data_batch_2 could not be read.*download CIFAR-10 again"):
        D.load_cifar10(fake_root, "train")


def test_wrong_shapes(fake_root):
    write_batch(fake_root / D.FOLDER / "test_batch", data=np.zeros((20, 1000), np.uint8))
    with pytest.raises(D.DataError, match="test_batch.*N x 3072"):
        D.load_cifar10(fake_root, "test")


def test_labels_out_of_range(fake_root):
    write_batch(fake_root / D.FOLDER / "test_batch", labels=[12] * 20)
    with pytest.raises(D.DataError, match="labels must be 0..9"):
        D.load_cifar10(fake_root, "test")


def test_label_count_mismatch(fake_root):
    write_batch(fake_root / D.FOLDER / "test_batch", labels=[1] * 5)
    with pytest.raises(D.DataError, match="20 images but"):
        D.load_cifar10(fake_root, "test")


def test_hostile_pickle_is_refused_without_running(fake_root, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with open(fake_root / D.FOLDER / "test_batch", "wb") as fh:
        pickle.dump({"data": Evil(), "labels": []}, fh)
    with pytest.raises(D.DataError, match="refusing to load"):
        D.load_cifar10(fake_root, "test")
    assert not marker.exists()


def make_archive(tmp_path, fake_root):
    import tarfile
    archive = tmp_path / "src.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(fake_root / D.FOLDER, arcname=D.FOLDER)
    return archive


def test_download_checks_md5_and_reports_progress(tmp_path, fake_root):
    archive = make_archive(tmp_path, fake_root)
    seen = []
    dest = tmp_path / "dest"
    folder = D.download_cifar10(dest, progress=lambda done, total: seen.append((done, total)),
                                url=archive.as_uri(), md5=D.md5sum(archive))
    assert D.has_cifar10(dest) and folder == dest / D.FOLDER
    assert seen and seen[-1][0] == archive.stat().st_size
    assert len(D.load_cifar10(dest, "train")) == 100


def test_download_md5_mismatch_is_an_error_and_leaves_nothing(tmp_path, fake_root):
    archive = make_archive(tmp_path, fake_root)
    dest = tmp_path / "dest"
    with pytest.raises(D.DataError, match="failed its checksum"):
        D.download_cifar10(dest, url=archive.as_uri(), md5="0" * 32)
    assert not D.has_cifar10(dest) and not any(dest.glob("*.tar.gz*"))


def test_unreachable_download(tmp_path):
    with pytest.raises(D.DataError, match="could not download"):
        D.download_cifar10(tmp_path, url=(tmp_path / "missing.tar.gz").as_uri())


def test_bundled_sample_is_stratified():
    train, test = D.load_sample()
    assert train.images.shape == (5000, 3, 32, 32)
    assert torch.equal(test.labels.bincount(), torch.full((10,), 200))
    ev = D.eval_subset(test)
    assert torch.equal(ev.labels.bincount(), torch.full((10,), 100))


def test_augment_crops_and_flips_without_inventing_content():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 32, 32), dtype=torch.uint8)   # no zeros: padding is visible
    out = D.augment(images, g)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert not torch.equal(out, images)
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    for i in range(len(images)):  # every output is a 32x32 window of the padded image, maybe mirrored
        found = any(torch.equal(out[i], window)
                    for dy in range(9) for dx in range(9)
                    for window in (padded[i, :, dy:dy + 32, dx:dx + 32],
                                   padded[i, :, dy:dy + 32, dx:dx + 32].flip(-1)))
        assert found, f"image {i} is not a crop of its own padded original"


def test_augment_is_deterministic_under_a_seed():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    a = D.augment(images, torch.Generator().manual_seed(7))
    b = D.augment(images, torch.Generator().manual_seed(7))
    c = D.augment(images, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augment_flips_about_half():
    images = torch.arange(32, dtype=torch.uint8).repeat(1000, 3, 32, 1)   # columns 0..31
    out = D.augment(images, torch.Generator().manual_seed(0), pad=0)
    flipped = (out[:, 0, 0, 0] == 31).float().mean()
    assert 0.4 < flipped < 0.6


def test_cutout_paints_one_square_of_mean_colour_per_image():
    images = torch.zeros(32, 3, 32, 32, dtype=torch.uint8)
    out = D.cutout(images, 8, torch.Generator().manual_seed(0))
    painted = (out[:, 0] == D.MEAN_PIXEL[0])
    counts = painted.flatten(1).sum(1)
    assert counts.max() == 64 and counts.min() >= 16       # 8x8, or clipped at an edge (at least 4x4)
    assert torch.equal(out[:, 1][painted], torch.full_like(out[:, 1][painted], D.MEAN_PIXEL[1]))
    assert torch.equal(images, torch.zeros_like(images)), "the input is not modified"


def test_a_folder_is_known_by_its_real_path(tmp_path):
    checked_folder, DataError = D.checked_folder, D.DataError
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "link").symlink_to(tmp_path)
    spellings = [tmp_path, f"{tmp_path}/", f"{tmp_path}//.", tmp_path / "link", tmp_path / "cifar-10-batches-py"]
    assert len({checked_folder(s) for s in spellings}) == 1, "one folder, one cache entry"
    with pytest.raises(DataError, match="outside the folders"):
        checked_folder(tmp_path, allowed=[str(tmp_path / "elsewhere")])
    assert checked_folder(tmp_path / "link", allowed=[str(tmp_path)]) == (tmp_path / "cifar-10-batches-py").resolve()
