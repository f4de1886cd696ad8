"""The package installed from a wheel outside the checkout: its console script runs, finds its
packaged configs by name, and runs the pipeline on a minimal setting."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import MICRO

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel; its dependencies come from this interpreter's
    site-packages through a ``.pth`` line (added after the venv's own, so the wheel's modules
    win, and without running this environment's editable-install hooks)."""
    where = tmp_path_factory.mktemp("wheel")
    source = where / "source"  # setuptools builds in the source tree: a copy keeps the checkout clean
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "__pycache__", "*.egg-info", "build", "tests",
                                                                "benchmarks"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(where / "dist")], check=True, capture_output=True, cwd=where)
    wheel = next((where / "dist").glob("airrep-*.whl"))
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(subprocess.run([venv / "bin" / "python", "-c", purelib], check=True, capture_output=True,
                               text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "-q", str(wheel)], check=True, capture_output=True)
    names = zipfile.ZipFile(wheel).namelist()
    assert "airrep/configs/tiny.yaml" in names and not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    return venv


def _airrep(venv: Path, cwd: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRREP__", "PREFECT_"))}
    env["PREFECT_HOME"] = str(cwd / "prefect")
    return subprocess.run([str(venv / "bin" / "airrep"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_installed_cli_explains_itself_and_runs_a_packaged_config(installed, tmp_path):
    help_ = _airrep(installed, tmp_path, "--help")
    assert help_.returncode == 0 and "packaged config by name" in help_.stdout
    probe = subprocess.run([installed / "bin" / "python", "-c", "import airrep; print(airrep.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True)
    assert str(installed) in probe.stdout  # the wheel's code, not the checkout's

    overrides = [*MICRO, "evaluate.methods=[airrep]", f"work_dir={tmp_path / 'work'}"]
    run = _airrep(installed, tmp_path, "run", "-c", "tiny", *(arg for o in overrides for arg in ("--set", o)))
    assert run.returncode == 0, run.stderr[-4000:]
    assert (tmp_path / "work" / "artifacts").is_dir() and not (tmp_path / "configs").exists()

    missing = _airrep(installed, tmp_path, "run", "-c", "tinny")
    assert missing.returncode == 2 and "packaged config: bench, gpu, paper, tiny" in missing.stderr
