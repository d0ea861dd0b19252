"""Shared fixtures: small real images (no downloads), made once per session."""

from pathlib import Path

import pytest

from vitc.data.shards.embedded import digits_imagefolder, photo_imagefolder


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory) -> Path:
    """ImageFolder of scikit-learn's handwritten digits: 10 classes × 20 images, 32×32 JPEG."""
    return digits_imagefolder(tmp_path_factory.mktemp("digits"), size=32, per_class=20)


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    """ImageFolder of scikit-image photo crops: 4 classes × 6 images, 500×375 JPEG (quality 90)."""
    return photo_imagefolder(tmp_path_factory.mktemp("photos"), classes=4, per_class=6)
