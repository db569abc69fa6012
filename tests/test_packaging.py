"""The wheel: every subpackage of runner and the sbatch templates, which the renderer finds after a wheel install."""

import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

tomllib = pytest.importorskip("tomllib", reason="tomllib comes with Python 3.11 and later")


def test_pyproject_lists_every_subpackage():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(folder.relative_to(ROOT).parts) for folder in (ROOT / "runner").rglob("*")
             if (folder / "__init__.py").is_file()}

    assert found | {"runner"} <= set(config["packages"])  # a subpackage missing here would be left out of the wheel
    assert config["package-dir"]["runner.slurm_templates"] == "slurm_templates"


def test_wheel_ships_templates(tmp_path):
    source = tmp_path / "source"  # a copy, because the build writes build/ into the tree it builds
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)

    [wheel] = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {f"runner/slurm_templates/{path.name}" for path in (ROOT / "slurm_templates").glob("*.sbatch")}
    assert templates
    assert templates <= names
    assert "runner/checkpoint/discard.py" in names
