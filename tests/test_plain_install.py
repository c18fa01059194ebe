"""After a plain `pip install vil` (no extras) into a fresh virtual environment, the main job and the training
commands work, and what needs an optional package (matplotlib, tensorboard) says so in one line, not a traceback.

A real virtual environment (no --system-site-packages): only then are the extras really absent and the base
dependencies really the ones pyproject.toml declares. torch and torchvision are installed first, at the versions
this test runs under, then the project from a copy of its files, as a user's `pip install` would.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "model_args.dim=16", "--set", "model_args.depth=2"]


def _copy_project(target: Path) -> Path:
    """The files git tracks (and new, not ignored ones), without build outputs and run directories."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True
    )
    if listed.returncode != 0:  # not a git checkout: copy the tree, leaving out what git would ignore
        ignore = shutil.ignore_patterns(".git", "runs", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")
        return Path(shutil.copytree(ROOT, target, ignore=ignore))
    for name in listed.stdout.splitlines():
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def _image_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / "train" / name).mkdir(parents=True)
        for i in range(20):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "train" / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory):
    """bin/ of a fresh virtual environment with torch, torchvision and `pip install <project>` (no extras)."""
    work = tmp_path_factory.mktemp("plain")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    versions = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
    subprocess.run([*pip, *versions], check=True, timeout=1200)
    subprocess.run([*pip, str(_copy_project(work / "project"))], check=True, timeout=600)
    return venv / "bin"


def _vil(bin_dir: Path, cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed package, not this checkout
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return subprocess.run(["vil", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_plain_install_trains_evaluates_and_studies(plain_venv, tmp_path):
    for extra in ("matplotlib", "tensorboard"):  # the extras really are absent
        found = subprocess.run([str(plain_venv / "python"), "-c", f"import {extra}"], capture_output=True)
        assert found.returncode != 0, extra

    result = _vil(plain_venv, tmp_path, "train", "--epochs", "2", "--out", "digits")  # the main job, shortened
    assert result.returncode == 0, result.stderr
    assert "test (360 images, scored once" in result.stdout and "Traceback" not in result.stderr
    assert "no TensorBoard logs: tensorboard is not installed (pip install 'vil[plots]')" in result.stderr
    assert "no curves.png: matplotlib is not installed" in result.stderr
    assert (tmp_path / "digits" / "model_best.safetensors").is_file()

    result = _vil(plain_venv, tmp_path, "eval", "digits")
    assert result.returncode == 0 and "digits (test, 360 images" in result.stdout, result.stderr

    data = _image_folder(tmp_path / "photos")
    result = _vil(plain_venv, tmp_path, "train", "--data", str(data), "--epochs", "1", "--workers", "0", *TINY)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr

    study = ["study", "pooling", "--designs", "mean", "--seeds", "1", "--epochs", "1", "--out", "study", *TINY]
    result = _vil(plain_venv, tmp_path, *study)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "no study.png: matplotlib is not installed" in result.stderr and (tmp_path / "study" / "study.md").is_file()

    result = _vil(plain_venv, tmp_path, "bench", "--plot", "plot.png", "--sizes", "32:1")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "vil bench: error: --plot needs matplotlib: pip install 'vil[plots]'\n"
