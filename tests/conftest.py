"""Shared fixtures: small real images (no downloads), made once per session; and how the two
pytest-xdist workers of `make test` share the machine."""

import fcntl
import os
from pathlib import Path

import pytest

from vitc.data.shards.embedded import digits_imagefolder, photo_imagefolder


@pytest.fixture(autouse=True)
def machine_share(request, tmp_path_factory):
    """A `whole_machine` test runs alone: under xdist it waits for the other worker's test to end,
    and the other worker starts no test until it is done. A turnstile of two flock()s in the
    session's temp directory, which the workers share: every test passes the gate, then holds the
    lock shared; a whole-machine test holds the gate while it waits for the lock exclusively."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        yield
        return
    exclusive = request.node.get_closest_marker("whole_machine") is not None
    root = tmp_path_factory.getbasetemp().parent  # .../pytest-N, above each worker's popen-gwK
    with open(root / "machine.gate", "a") as gate, open(root / "machine.lock", "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        if not exclusive:
            fcntl.flock(gate, fcntl.LOCK_UN)
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield  # both released when the files close


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """ImageFolder of scikit-learn's handwritten digits: 10 classes × 20 images, 32×32 JPEG."""
    return digits_imagefolder(tmp_path_factory.mktemp("digits"), size=32, per_class=20)


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """ImageFolder of scikit-image photo crops: 4 classes × 6 images, 500×375 JPEG (quality 90)."""
    return photo_imagefolder(tmp_path_factory.mktemp("photos"), classes=4, per_class=6)
