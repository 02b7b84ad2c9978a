import os
import tempfile
from pathlib import Path

import pytest
import torch

pytest_plugins = ("app_fixtures",)      # the app tests' fixtures (tests/app_fixtures.py)


def pytest_configure(config):
    # The app's workspace store (ui/workspace.py) writes to PLAYGROUND_HOME: tests never touch the user's
    # real data folder or database. Tests that need a store of their own set PLAYGROUND_HOME themselves.
    os.environ["PLAYGROUND_HOME"] = tempfile.mkdtemp(prefix="playground-tests-")
    os.environ.pop("PLAYGROUND_DB_URL", None)
    # No background slider grids (ui/precompute.py) in every test's fresh data folder: tests/test_precompute.py
    # runs them on purpose.
    os.environ["PLAYGROUND_PRECOMPUTE"] = "off"
    config.addinivalue_line("markers", "slow: takes tens of seconds (compiles or trains)")
    config.addinivalue_line("markers", "realdata: needs CIFAR10_ROOT pointing at real CIFAR-10")
    config.addinivalue_line("markers", "browser: drives the app in headless Chromium")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cifar_root() -> Path:
    root = os.environ.get("CIFAR10_ROOT")
    if not root:
        pytest.skip("real-data test: set CIFAR10_ROOT to a folder holding cifar-10-batches-py/")
    from compression.data import has_cifar10
    if not has_cifar10(root):
        pytest.skip(f"real-data test: CIFAR10_ROOT={root} does not hold cifar-10-batches-py/")
    return Path(root)
