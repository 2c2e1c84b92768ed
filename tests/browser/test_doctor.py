"""The doctor's day in Chromium: sign in, find the patient by typing the ID card number and
pressing Enter (as a scanner does), read the timeline, open a lab result and its trend, open
a CT study in the image viewer (stored by STOW-RS, linked to the patient by the hospital's
MRN), and accept one reuse and decline another with a reason. Screenshots of each step are
kept under test-artifacts/screenshots/.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from pydicom.uid import generate_uid

from hub.web import viewer
from tests.browser.test_viewer import stow
from tests.conftest import Client, HubUnderTest, observation, unique
from tests.identity_support import create, fresh_people, person, source
from tests.imaging_support import fresh_copy
from tests.recognition_support import (
    Hospital,
    cbc_panel,
    day,
    days_ago,
    qc,
    register_hospital,
)
from tests.test_web_auth import PASSWORD, run_cli


def _wait_for_study(hospital: Hospital, study_uid: str) -> None:
    """The ImagingStudy is written in the background once the STOW'd study is quiet."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = hospital.client.get(
            "/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}
        )
        if found.status_code == 200 and found.json().get("entry"):
            return
        time.sleep(0.2)
    pytest.fail(f"no ImagingStudy for {study_uid} after 30 s")


@pytest.fixture(scope="module")
def clinic(hub: HubUnderTest, admin: Client, tmp_path_factory: pytest.TempPathFactory) -> Any:
    passes = [
        qc("hematology", day(-300), day(60)),
        qc("clinical-chemistry", day(-300), day(60)),
        qc("radiology", day(-300), day(60)),
    ]
    a = register_hospital(hub, admin, "杭州市西湖区中心医院", "330106", passes=passes)
    c = register_hospital(hub, admin, "杭州市拱墅区社区医院", "330105", passes=passes)
    someone = person(fresh_people())
    mrn = f"MRN-{unique()}"
    a_patient = create(a.client, source(someone, a.id, mrn))
    create(c.client, source(someone, c.id))
    cbc_panel(a, a_patient, days_ago(3), flags={"6690-2": "H"})
    cbc_panel(a, a_patient, days_ago(90))
    glucose = observation(a.id, a_patient, code="2345-7", value=5.4, when=days_ago(2))
    glucose["valueQuantity"] = {"value": 5.4, "unit": "mmol/L"}
    glucose["referenceRange"] = [{"low": {"value": 3.9}, "high": {"value": 6.1}}]
    create(a.client, glucose)
    study_uid, series_uid = generate_uid(), generate_uid()
    directory = tmp_path_factory.mktemp("doctor-study")
    files = [
        fresh_copy(
            "CT_small.dcm",
            directory,
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=series_uid,
            SeriesNumber=1,
            SeriesDescription="胸部 CT",
            InstanceNumber=number,
            PatientID=mrn,
            PatientName="TEST^DOCTOR",
        )
        for number in (1, 2)
    ]
    stow(hub, a.client, files)
    _wait_for_study(a, study_uid)
    username = f"doctor-{unique()}"
    run_cli(
        hub,
        "users", "add", "--username", username, "--role", "doctor",
        "--organization", c.id, "--name", "王医生", "--password-stdin", "--json",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    return {"someone": someone, "username": username, "study": study_uid}


def test_doctor_finds_reads_views_and_decides(
    page: Any, clinic: dict[str, Any], screenshot: Any
) -> None:
    if not viewer.assets_built():
        pytest.fail("viewer assets not built: run make assets (npm ci + build_assets.mjs)")
    page.goto("/login")
    page.fill("#username", clinic["username"])
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/")
    search = page.locator("#q")
    assert search.evaluate("element => element === document.activeElement")  # autofocus
    screenshot(page, "search")

    # a scanner: the number typed fast, then Enter
    page.keyboard.type(clinic["someone"].resident_id, delay=5)
    page.keyboard.press("Enter")
    hit = page.locator("tr.ws-hit")
    hit.wait_for()
    assert clinic["someone"].name in hit.inner_text()
    screenshot(page, "found")
    hit.locator("button[type=submit]").click()
    page.wait_for_url("**/patients/*")

    timeline = page.locator(".ws-timeline")
    assert "白细胞计数" in timeline.inner_text()
    assert page.locator(".ws-flag.high").count() >= 1
    assert "浙HR" in timeline.inner_text()
    screenshot(page, "timeline")
    patient_url = page.url

    # a lab result in full, then the trend of one value
    page.locator(".ws-lab .ws-title", has_text="血常规").first.click()
    page.wait_for_url("**/results/DiagnosticReport/*")
    assert "血小板计数" in page.locator(".ws-result").inner_text()
    screenshot(page, "lab-result")
    page.locator("tr[data-code='718-7'] a.ws-value").first.click()
    page.wait_for_url(re.compile(r"/patients/[^/]+/trend\?code="))
    chart = page.locator("#trend-chart svg")
    chart.wait_for()
    assert page.locator(".ws-trend tbody tr").count() == 2
    screenshot(page, "trend")

    # the study in the viewer: the first image renders
    page.goto(patient_url)
    page.locator(f"a[href='/viewer/studies/{clinic['study']}']").first.click()
    page.wait_for_selector('.viewer-viewport[data-ready="true"]')
    screenshot(page, "viewer")

    # reuse check: accept the blood count, decline the glucose with a reason
    page.goto(patient_url)
    page.fill("#item-filter", "血常规")
    page.locator("input[name=item][value=cbc]").check()
    page.fill("#item-filter", "glucose")
    page.locator("input[name=item][value=glucose]").check()
    page.locator("#reuse-form button[type=submit]").click()
    cbc = page.locator("#reuse-results li[data-item=cbc]")
    cbc.wait_for()
    assert cbc.get_attribute("data-outcome") == "reusable"
    cbc.locator(".ws-accept button").click()
    cbc.locator(".ws-decision.recorded[data-outcome=accepted]").wait_for()
    glucose = page.locator("#reuse-results li[data-item=glucose]")
    assert glucose.get_attribute("data-outcome") == "reusable"
    glucose.locator("summary").click()
    glucose.locator("select[name=reason]").select_option("condition-changed")
    glucose.locator(".ws-decline button[type=submit]").click()
    glucose.locator(".ws-decision.recorded[data-outcome=declined]").wait_for()
    assert "病情变化" in glucose.inner_text()
    screenshot(page, "decisions")
