"""The wheel holds every subpackage and runs the quick start on its own.

Before the fix the package list in pyproject.toml was written by hand and a new
subpackage (``onnxprune.channels``) was missing from every install: each pass then
failed with ModuleNotFoundError. These tests build the wheel from the checkout (no
network: ``--no-isolation``), compare it with what is on disk, and import the unpacked
wheel, not the checkout, to run the README's quick-start command.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[1]


def _setuptools_ok() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    return int(setuptools.__version__.split(".")[0]) >= 77


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _setuptools_ok():
        pytest.skip("building the wheel needs setuptools >= 77 (the test extra installs it)")
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy of the tracked files so the build's egg-info/build folders never
    # land in the working tree.
    src = out / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(out), str(src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (whl,) = out.glob("onnxprune-*.whl")
    return whl


def test_wheel_has_every_subpackage_and_pass(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    want = {f"onnxprune/{p.relative_to(ROOT / 'onnxprune').as_posix()}"
            for p in (ROOT / "onnxprune").rglob("*.py") if "__pycache__" not in p.parts}
    want |= {f"onnxprune/passes/{p.relative_to(ROOT / 'passes').as_posix()}"
             for p in (ROOT / "passes").rglob("*.py") if "__pycache__" not in p.parts}
    assert "onnxprune/channels/__init__.py" in want and "onnxprune/passes/fold_bn.py" in want
    missing = sorted(want - names)
    assert not missing, f"wheel lacks {missing}"
    # Nothing outside the package: no top-level passes/ or tests/.
    assert not [n for n in names if n.startswith(("passes/", "tests/", "tools/"))]


def test_wheel_metadata_has_spdx_license(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(meta).decode()
    assert "License-Expression: Apache-2.0" in text
    assert "Version: " + __import__("onnxprune").__version__ in text


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_pyproject_uses_spdx_string_and_no_hand_written_package_list() -> None:
    assert tomllib is not None
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(conf["project"]["license"], str)
    assert "packages" not in conf.get("tool", {}).get("setuptools", {})


def test_unpacked_wheel_runs_the_quick_start(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "run"
    work.mkdir()
    code = ("import sys, onnxprune, onnxprune.passes;"
            "assert onnxprune.__file__.startswith(sys.argv[1]), onnxprune.__file__;"
            "assert onnxprune.passes.__file__.startswith(sys.argv[1]), onnxprune.passes.__file__;"
            "from onnxprune.cli import main;"
            "sys.exit(main(sys.argv[2:]))")
    # The unpacked wheel goes first on the path; the checkout is not on it (cwd is elsewhere).
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code, str(site), str(ROOT / "models" / "mnist-8.onnx"),
                           "--passes", "fold-bn", "prune-channels:ratio=0.25,round-to=4", "-o", "small.onnx"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (work / "small.onnx").stat().st_size > 0
