"""Shared fixtures: small real images (no downloads), made once per session, and digit shards made
once per test module; and how the two pytest-xdist workers of `make test` share the machine.
Helpers that start and read training runs are in tests/engine_runs.py."""

import fcntl
import os
from pathlib import Path

import pytest

from vitc.data.shards.embedded import digits_imagefolder, photo_imagefolder

# One intra-op thread per test process, set before any test module imports torch (nothing above
# does) so that this process and every `vitc` it starts inherit it; a user's own setting wins.
# `make test` runs two xdist workers on two cores, and with torch's default of a thread per core
# each parallel region's threads spin at its barrier while the other worker holds a core, which
# made the CPU-bound training tests several times slower on a busy machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")


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


@pytest.fixture(scope="module")
def shards(digits_folder, tmp_path_factory) -> Path:
    """`train/` and `val/` shards of the digits (tests/engine_runs.py digit_shards), one set per
    test module, read only: a test that changes shards builds its own."""
    # imported here: engine_runs imports torch, which only the modules that train need
    from engine_runs import digit_shards

    return digit_shards(digits_folder, tmp_path_factory.mktemp("shards"))
