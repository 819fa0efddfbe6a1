from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT.parent / "shared" / "zoo"


@pytest.fixture(scope="session")
def zoo() -> Path:
    if not (ZOO / "models").is_dir():
        pytest.skip(f"model zoo not found at {ZOO}")
    return ZOO


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
