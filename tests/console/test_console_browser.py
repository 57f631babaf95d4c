"""The job console in headless Chromium through Envoy's edge: progress to 100 %, stop, restart."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from heraldo import cli
from tests.cli.conftest import edge_credentials

pytestmark = pytest.mark.mesh

#: Where the last screenshot is kept for people to look at (var/ is not committed).
SCREENSHOT_COPY = Path(__file__).resolve().parents[2] / "var" / "console-screenshot.png"
#: Generous for a loaded two-core machine; the poll returns as soon as the page gets there.
PAGE_DEADLINE_MS = 90_000


def start_job(mesh, *extra: str) -> str:
    credentials = edge_credentials(mesh.workdir)
    api = cli.HttpApi(mesh.edge_url, token=cli.read_token(str(credentials)) if credentials
                      else "")
    body = {"jobName": f"console-{uuid.uuid4().hex[:6]}",
            "parameters": {"chunkSize": int(extra[0])} if extra else {}}
    return api.call("POST", "/v1/jobs", body)["jobId"]


def open_console(browser, mesh, token: str):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{mesh.console_url}#token={token}" if token else mesh.console_url)
    return page


def wait_for_status(page, job_id: str | None, *statuses: str) -> None:
    """Until the detail panel shows ``job_id`` (None: whichever job is selected) in a status."""
    page.wait_for_function(
        """([jobId, statuses]) => {
             const row = jobId ? document.querySelector(`#jobs tr[data-job-id="${jobId}"]`)
                               : document.querySelector("#jobs tr.selected");
             return row && row.classList.contains("selected")
               && statuses.includes(document.querySelector("#job-status").textContent);
           }""", arg=[job_id, list(statuses)], timeout=PAGE_DEADLINE_MS)


def test_a_job_reaches_100_percent_on_the_page(browser, loaded_mesh, token, tmp_path):
    job_id = start_job(loaded_mesh)
    page = open_console(browser, loaded_mesh, token)

    page.click(f'#jobs tr[data-job-id="{job_id}"]')
    wait_for_status(page, job_id, "COMPLETED")
    page.wait_for_function("document.querySelector('#job-percent').textContent === '100%'",
                           timeout=PAGE_DEADLINE_MS)

    replicas = page.locator("#replicas tbody tr").all_inner_texts()
    assert [row.split()[0] for row in replicas] == ["notifier-1", "notifier-2", "notifier-3"]
    assert "invalid email address" in page.inner_text("#reasons")
    # Nothing was in doubt in this job: no notice.
    assert page.inner_text("#notices").strip() == "none"
    assert page.inner_text('#job-numbers dd[data-field="failed"]') == "0"
    assert page.locator("#stop").is_disabled() and page.locator("#restart").is_disabled()

    screenshot = tmp_path / "console.png"
    page.screenshot(path=str(screenshot), full_page=True)
    SCREENSHOT_COPY.parent.mkdir(exist_ok=True)
    shutil.copyfile(screenshot, SCREENSHOT_COPY)
    page.close()


def test_stop_and_restart_from_the_page(browser, loaded_mesh, token):
    # Small chunks keep the job running long enough to be stopped in flight.
    job_id = start_job(loaded_mesh, "3")
    page = open_console(browser, loaded_mesh, token)
    page.click(f'#jobs tr[data-job-id="{job_id}"]')
    wait_for_status(page, job_id, "STARTING", "STARTED", "COMPLETED")
    if page.inner_text("#job-status") == "COMPLETED":
        pytest.skip("the job completed before the page could stop it")

    page.click("#stop")
    wait_for_status(page, job_id, "STOPPED", "COMPLETED")
    if page.inner_text("#job-status") == "COMPLETED":
        pytest.skip("the job completed before the stop arrived")
    page.click("#restart")
    # A restart may run as a new execution with an id of its own; the page selects it.
    wait_for_status(page, None, "COMPLETED")

    assert page.inner_text("#job-percent") == "100%"
    page.close()
