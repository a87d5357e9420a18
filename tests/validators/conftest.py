"""Fixtures for the validator tests."""

from __future__ import annotations

import pytest
from fs_world import Workspace, build_workspace

__all__ = ["workspace"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The symlink-trap tree of fs_world, built once per test module."""
    return build_workspace(tmp_path_factory.mktemp("fs"))
