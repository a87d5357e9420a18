"""The wheel installs capsup.* only: never top-level supervisor/agents/validators."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_claims_only_the_capsup_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("capsup-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    code = [
        n
        for n in names
        if not n.startswith("capsup-") or not n.split("/")[0].endswith(".dist-info")
    ]
    assert code, names
    assert all(n.startswith("capsup/") for n in code), code
    assert not any(n == "capsup/__init__.py" for n in code)  # a namespace package
    for package in ("supervisor", "agents", "validators"):
        assert f"capsup/{package}/__init__.py" in code
        assert f"capsup/{package}/py.typed" in code
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "capsup = capsup.supervisor.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


def test_the_installed_package_does_not_shadow_generic_names(tmp_path: Path) -> None:
    probe = "import importlib.util as u; print([n for n in ('supervisor', 'agents', 'validators') if u.find_spec(n)])"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    assert out.stdout.strip() == "[]"
