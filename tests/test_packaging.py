"""Packaging and deployment files: the console script, the compose file, the layout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import YIJIAN

ROOT = Path(__file__).resolve().parents[1]


def test_console_script_lists_the_contract_commands() -> None:
    """`yijian --help` offers the commands DESIGN.md fixes."""
    out = subprocess.run([YIJIAN, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("serve", "db", "orgs", "clients", "audit", "demo"):
        assert command in out


def test_layout_packages_exist() -> None:
    for package in ("hub", "adapters", "fhir_profiles", "imaging"):
        assert (ROOT / package / "__init__.py").is_file()
    assert (ROOT / "bench" / "crud.py").is_file()


def _compose() -> list[str] | None:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_file_is_accepted() -> None:
    """`docker compose config` accepts the file and it has the required services."""
    compose = _compose()
    if compose is None:
        pytest.skip("no docker compose tool on this machine (.ci/run installs one)")
    result = subprocess.run(
        [*compose, "-f", str(ROOT / "docker-compose.yml"), "config", "--services"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert {"postgres", "redis", "api", "worker"} <= services
