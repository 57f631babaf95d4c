"""The whole local mesh with the demo invoices, and a headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.cli.conftest import edge_credentials, load_invoices

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: A quiet, sandbox-free headless Chromium: it must not reach anything beyond 127.0.0.1.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def loaded_mesh(mesh):  # noqa: F811 - the imported fixture, requested by name
    load_invoices(mesh.database_url)
    return mesh


@pytest.fixture(scope="module")
def browser(loaded_mesh):
    """Chromium from the system (Debian's ``chromium``); never a downloaded one.

    It starts after the mesh and stops before it: Playwright's sync API keeps an event loop
    running in this thread, where the mesh fixtures' ``asyncio.run`` would then refuse to run.
    """
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs the chromium package")
        pytest.skip("no chromium here (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def token(loaded_mesh) -> str:
    """The edge's bearer token when the mesh has one, else an empty string."""
    from heraldo.cli import read_token

    credentials = edge_credentials(loaded_mesh.workdir)
    return read_token(str(credentials)) if credentials else ""
