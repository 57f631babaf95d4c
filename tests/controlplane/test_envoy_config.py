"""The bootstraps: the rendered template and the compose file, one configuration Envoy accepts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from heraldo.mesh.credentials import generate
from heraldo.mesh.envoy_config import (
    COMPOSE_PARAMETERS,
    DESCRIPTOR_PATH,
    render_bootstrap,
    without_header,
)

from .conftest import envoy_binary, free_port

COMPOSE_BOOTSTRAP = Path(__file__).resolve().parents[2] / "envoy" / "compose.yaml"
LOCAL = {"edge_port": 8080, "mesh_port": 9090, "admin_port": 9901, "xds_host": "127.0.0.1",
         "xds_port": 18000, "descriptor_path": DESCRIPTOR_PATH, "node_id": "edge-1"}


@pytest.fixture
def jwks_path(tmp_path: Path) -> Path:
    """Envoy refuses a bootstrap whose key set file is missing: validation needs a real one."""
    return generate(tmp_path / "credentials").jwks_path


def _validate(bootstrap: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "envoy.yaml"
    path.write_text(bootstrap)
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--base-id", str(free_port())],
        capture_output=True, text=True, timeout=60)


def test_compose_bootstrap_is_the_template_rendered_for_compose():
    rendered = render_bootstrap(**COMPOSE_PARAMETERS)

    assert without_header(COMPOSE_BOOTSTRAP.read_text()) == without_header(rendered)


@pytest.mark.parametrize("batch_address", [None, "127.0.0.1:50051"], ids=["batch-eds", "fixed"])
def test_envoy_accepts_the_rendered_bootstrap(batch_address, tmp_path, jwks_path):
    result = _validate(render_bootstrap(**LOCAL, batch_address=batch_address,
                                        jwks_path=jwks_path), tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_accepts_the_compose_bootstrap(tmp_path, jwks_path):
    # The descriptor set and the key set live under /etc/envoy only inside the container.
    bootstrap = COMPOSE_BOOTSTRAP.read_text().replace(
        str(COMPOSE_PARAMETERS["descriptor_path"]), str(DESCRIPTOR_PATH)).replace(
        str(COMPOSE_PARAMETERS["jwks_path"]), str(jwks_path))

    result = _validate(bootstrap, tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr


def test_admin_listens_on_loopback_only():
    for bootstrap in (render_bootstrap(**LOCAL), COMPOSE_BOOTSTRAP.read_text()):
        admin = bootstrap.split("admin:", 1)[1].split("\n\n", 1)[0]
        assert "address: 127.0.0.1" in admin


@pytest.mark.parametrize("override", [
    {"batch_address": "no-port"},
    {"edge_port": 0},
    {"admin_port": 70000},
    {"node_id": "two words"},
])
def test_bad_parameters_are_refused(override):
    with pytest.raises(ValueError):
        render_bootstrap(**{**LOCAL, **override})
