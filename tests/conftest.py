"""Suite-wide setup (the ciliumlite plugin is registered by the package entry point)."""

from __future__ import annotations

from pathlib import Path

import pytest

TEST_OBJECTS = Path(__file__).parent / "bpf" / "objects"


@pytest.fixture(scope="session")
def test_objects() -> Path:
    """Directory of the compiled tests/bpf/progs objects (built by `make build`)."""
    if not (TEST_OBJECTS / "test_maps.o").exists():
        pytest.fail("tests/bpf/objects is empty: run `make build` first")
    return TEST_OBJECTS
