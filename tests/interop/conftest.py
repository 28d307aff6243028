"""Tests of tfafm.interop: they need TF_USE_LEGACY_KERAS=1 set before TensorFlow is imported.

``tests/test_interop.py`` runs this folder in its own pytest process with that
variable set; a pytest process without it (the README's ``python -m pytest -q
tests``) does not collect these files itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def movielens():
    """All ml-latest-small ratings (shuffled), or a skip when ../shared/data is absent."""
    from keras2_models import MOVIELENS, movielens_ratings

    if not (Path(MOVIELENS) / "ratings.csv.gz").is_file():
        pytest.skip(f"MovieLens ml-latest-small not found at {MOVIELENS}")
    return movielens_ratings()


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("interop")
