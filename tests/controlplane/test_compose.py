"""compose.yaml cannot run here (no Docker engine): it is validated against the Compose
specification, and checked to agree with the local mesh on ports and Envoy's bootstrap."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from heraldo.mesh.envoy_config import COMPOSE_PARAMETERS
from heraldo.mesh.supervisor import MeshPorts

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "compose.yaml"


def _compose() -> dict:
    return YAML(typ="safe").load(COMPOSE_FILE.read_text())


def test_compose_file_follows_the_compose_specification():
    binary = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.fail("check-jsonschema is missing: pip install -e '.[dev]'")

    result = subprocess.run([binary, "--builtin-schema", "vendor.compose-spec",
                             str(COMPOSE_FILE)], capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_publishes_the_local_mesh_ports():
    services = _compose()["services"]
    defaults = MeshPorts()

    assert f"{defaults.edge}:{COMPOSE_PARAMETERS['edge_port']}" in services["envoy"]["ports"]
    assert f"{defaults.consul}:{defaults.consul}" in services["consul"]["ports"]
    assert services["controlplane"]["environment"]["HERALDO_GRPC_PORT"] == str(
        COMPOSE_PARAMETERS["xds_port"])


def test_compose_envoy_gets_its_bootstrap_descriptor_and_key_set():
    services = _compose()["services"]
    mounts = {volume.split(":")[1] for volume in services["envoy"]["volumes"]}

    assert str(Path(COMPOSE_PARAMETERS["descriptor_path"])) in mounts
    assert str(Path(COMPOSE_PARAMETERS["jwks_path"]).parent) in mounts
    assert services["envoy"]["depends_on"]["credentials"]["condition"] == \
        "service_completed_successfully"


def test_every_long_running_service_has_a_health_check():
    one_shot = {"setup", "credentials"}
    services = _compose()["services"]

    missing = [name for name, spec in services.items()
               if name not in one_shot and "healthcheck" not in spec]

    assert not missing
