"""The DICOM viewer (hub/web/templates/viewer.html + static/viewer/viewer.js) in Chromium,
reading a real study through the session hub's DICOMweb.

A CT series of five instances (pydicom's CT_small.dcm with fresh UIDs and different pixel
values, stored out of order) and a JPEG 2000 MR instance in a second series are stored by
STOW-RS as hospital_a. The page is viewer.html rendered with ``viewer_context`` and an admin
token, served at a hub URL through Playwright's routing (same origin as /dicomweb); the
workstation's own route is tested through login elsewhere. Everything else is real: the hub's
DICOMweb, its /static files, the vendor builds from npm.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydicom.uid import generate_uid

from hub.web import viewer
from tests.conftest import Client, HubUnderTest, unique
from tests.imaging_support import fresh_copy
from tests.imaging_support import testdata as sample_file

WEB = Path(viewer.__file__).resolve().parent
CT_WINDOW = (40.0, 400.0)  # (center, width) stored in the CT copies
CT_COUNT = 5


def pixel_offset(number: int) -> int:
    """What instance ``number`` adds to CT_small's stored values (so each slice differs)."""
    return 10 * number


def first_stored_value(number: int) -> int:
    base = pydicom.dcmread(fresh_copy_source()).pixel_array
    return int(base[0, 0]) + pixel_offset(number)


def fresh_copy_source() -> str:
    return str(sample_file("CT_small.dcm"))


def template(name: str) -> Any:
    environment = Environment(
        loader=FileSystemLoader(WEB / "templates"), autoescape=select_autoescape(["html"])
    )
    return environment.get_template(name)


def stow(hub: HubUnderTest, client: Client, files: list[Path]) -> None:
    boundary = f"yijian{unique()}"
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + path.read_bytes()
        + b"\r\n"
        for path in files
    )
    body += f"--{boundary}--\r\n".encode()
    response = httpx.post(
        f"{hub.base_url}/dicomweb/studies",
        content=body,
        headers={
            "Authorization": str(client.http.headers["Authorization"]),
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def study(hub: HubUnderTest, hospital_a: Client, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A study: series 1 = five CT slices (native), series 2 = one JPEG 2000 MR image."""
    directory = tmp_path_factory.mktemp("viewer-study")
    study_uid, ct_series, mr_series = generate_uid(), generate_uid(), generate_uid()
    patient = {
        "PatientID": f"V-{unique()}",
        "PatientName": "CHEN^JING",
        "SpecificCharacterSet": "ISO_IR 192",
    }
    base = pydicom.dcmread(fresh_copy_source())
    pixels = base.pixel_array
    files = []
    for number in range(1, CT_COUNT + 1):
        shifted = (pixels.astype(np.int32) + pixel_offset(number)).astype(pixels.dtype)
        files.append(
            fresh_copy(
                "CT_small.dcm",
                directory,
                StudyInstanceUID=study_uid,
                SeriesInstanceUID=ct_series,
                SeriesNumber=1,
                SeriesDescription="胸部 CT",
                InstanceNumber=number,
                WindowCenter=CT_WINDOW[0],
                WindowWidth=CT_WINDOW[1],
                PixelData=shifted.tobytes(),
                **patient,
            )
        )
    random.Random(7).shuffle(files)  # stored out of order: the viewer orders by number
    files.append(
        fresh_copy(
            "MR_small_jp2klossless.dcm",
            directory,
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=mr_series,
            SeriesNumber=2,
            SeriesDescription="MR JPEG 2000",
            InstanceNumber=1,
            **patient,
        )
    )
    stow(hub, hospital_a, files)
    return {"study": study_uid, "ct": ct_series, "mr": mr_series}


def open_viewer(
    page: Any,
    hub: HubUnderTest,
    admin: Client,
    study_uid: str,
    lang: str,
    token: str | None = None,
    wait: bool = True,
) -> None:
    """viewer.html for ``study_uid`` at {hub}/viewer-under-test/..., as a web route would,
    with the admin's token unless ``token`` is given."""
    if not viewer.assets_built():
        pytest.fail("viewer assets not built: run make assets (npm ci + build_assets.mjs)")
    if token is None:
        token = str(admin.http.headers["Authorization"]).removeprefix("Bearer ")
    html = template("viewer.html").render(
        viewer.viewer_context(study_uid, "/dicomweb", token, lang, "/")
    )
    url = f"{hub.base_url}/viewer-under-test/{study_uid}"
    page.route(url, lambda route: route.fulfill(status=200, body=html, content_type="text/html"))
    page.goto(url)
    if wait:
        page.wait_for_selector('.viewer-viewport[data-ready="true"]')


def state(page: Any) -> dict[str, Any]:
    return dict(page.evaluate("JSON.parse(JSON.stringify(window.yijianViewer))"))


def shown_first_value(page: Any) -> int:
    """The stored value of the displayed image's first pixel (what the browser decoded)."""
    return int(
        page.evaluate(
            "cornerstone.getImage(document.querySelector('.viewer-viewport')).getPixelData()[0]"
        )
    )


def wait_until(page: Any, expression: str) -> None:
    page.wait_for_function(f"() => {{ const s = window.yijianViewer; return {expression}; }}")


def wait_for_first_value(page: Any, value: int) -> None:
    wait_until(
        page,
        "cornerstone.getImage(document.querySelector('.viewer-viewport')).getPixelData()[0]"
        f" === {value}",
    )


def test_viewer_shows_scrolls_windows_and_zooms_a_ct_series(
    page: Any, hub: HubUnderTest, admin: Client, study: dict[str, str], screenshot: Any
) -> None:
    open_viewer(page, hub, admin, study["study"], "zh-CN")
    first = state(page)
    assert first["seriesUid"] == study["ct"]
    assert first["count"] == CT_COUNT
    assert first["index"] == 0
    # True stored values and the stored window: instance 1 first, whatever the storing order.
    assert shown_first_value(page) == first_stored_value(1)
    assert (first["voi"]["windowCenter"], first["voi"]["windowWidth"]) == CT_WINDOW
    assert not first["renderedFallback"]
    assert "图像 1 / 5" in page.inner_text('[data-overlay="image"]')
    assert "CHEN JING" in page.inner_text('[data-overlay="series"]')
    assert "胸部 CT" in page.inner_text('[data-overlay="series"]')
    screenshot(page, "first-image")

    viewport = page.locator(".viewer-viewport")
    box = viewport.bounding_box()
    center_x, center_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    # Scrolling: the mouse wheel, then the arrow keys.
    page.mouse.move(center_x, center_y)
    page.mouse.wheel(0, 120)
    wait_until(page, "s.index === 1")
    page.wait_for_function("() => window.yijianViewer.imagesLoaded >= 2")
    wait_for_first_value(page, first_stored_value(2))
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    wait_until(page, "s.index === 3")
    page.keyboard.press("ArrowUp")
    wait_until(page, "s.index === 2")
    wait_for_first_value(page, first_stored_value(3))
    assert "图像 3 / 5" in page.inner_text('[data-overlay="image"]')
    screenshot(page, "scrolled")

    # Window/level: a left drag, then a preset.
    page.mouse.move(center_x, center_y)
    page.mouse.down()
    page.mouse.move(center_x + 80, center_y + 50, steps=8)
    page.mouse.up()
    wait_until(
        page, f"s.voi.windowWidth !== {CT_WINDOW[1]} && s.voi.windowCenter !== {CT_WINDOW[0]}"
    )
    dragged = state(page)["voi"]
    assert f"W {round(dragged['windowWidth'], 1):g}" in page.inner_text('[data-overlay="voi"]')
    screenshot(page, "window-level-dragged")
    page.get_by_role("button", name="肺窗").click()
    wait_until(page, "s.voi.windowCenter === -600 && s.voi.windowWidth === 1500")
    screenshot(page, "lung-preset")

    # Zoom: a right drag; pan: a middle drag; reset brings both back.
    assert state(page)["scale"] > 0
    before = state(page)["scale"]
    page.mouse.move(center_x, center_y)
    page.mouse.down(button="right")
    page.mouse.move(center_x, center_y - 120, steps=8)
    page.mouse.up(button="right")
    wait_until(page, f"Math.abs(s.scale - {before}) > 0.05")
    zoomed = state(page)["scale"]
    page.mouse.move(center_x, center_y)
    page.mouse.down(button="middle")
    page.mouse.move(center_x + 60, center_y + 40, steps=6)
    page.mouse.up(button="middle")
    wait_until(page, "s.translation.x !== 0 || s.translation.y !== 0")
    assert state(page)["scale"] == pytest.approx(zoomed)
    screenshot(page, "zoomed-and-panned")
    page.get_by_role("button", name="复位").click()
    wait_until(page, f"Math.abs(s.scale - {before}) < 1e-6 && s.translation.x === 0")
    assert state(page)["voi"] == {"windowCenter": CT_WINDOW[0], "windowWidth": CT_WINDOW[1]}

    # Invert by key.
    page.keyboard.press("i")
    wait_until(page, "s.invert === true")
    assert page.yijian_errors == [], page.yijian_errors


def test_series_strip_thumbnails_and_the_rendered_fallback(
    page: Any, hub: HubUnderTest, admin: Client, study: dict[str, str], screenshot: Any
) -> None:
    open_viewer(page, hub, admin, study["study"], "zh-CN")
    items = page.locator(".viewer-series-item")
    assert items.count() == 2
    wait_until(page, "s.thumbnailsLoaded === 2")
    widths = page.eval_on_selector_all(
        ".viewer-series-item img", "images => images.map(i => i.naturalWidth)"
    )
    assert all(width > 0 for width in widths), widths
    assert items.nth(0).get_attribute("aria-selected") == "true"
    screenshot(page, "series-strip")

    # The JPEG 2000 series: the browser does not decode it, the server's rendering is shown.
    items.nth(1).click()
    wait_until(page, f"s.seriesUid === '{study['mr']}' && s.renderedFallback === true")
    assert items.nth(1).get_attribute("aria-selected") == "true"
    assert state(page)["count"] == 1
    notice = page.locator('[data-overlay="notice"]')
    assert notice.is_visible()
    assert "服务器渲染" in notice.inner_text()
    assert not page.locator('[data-overlay="status"]').is_visible()  # no "loading" left over
    screenshot(page, "rendered-fallback")

    # Back to the CT: native again.
    items.nth(0).click()
    wait_until(page, f"s.seriesUid === '{study['ct']}' && s.renderedFallback === false")
    assert not notice.is_visible()
    assert page.yijian_errors == [], page.yijian_errors


def test_viewer_in_english(
    page: Any, hub: HubUnderTest, admin: Client, study: dict[str, str], screenshot: Any
) -> None:
    open_viewer(page, hub, admin, study["study"], "en")
    assert page.get_by_role("button", name="Lung").is_visible()
    assert "Image 1 / 5" in page.inner_text('[data-overlay="image"]')
    assert page.locator("html").get_attribute("lang") == "en"
    screenshot(page, "english")


def test_viewer_page_without_assets_says_how_to_build_them() -> None:
    """No browser needed: the page names the command when the vendor files are missing."""
    for lang in ("zh-CN", "en"):
        context = viewer.viewer_context("1.2.3", "/dicomweb", "token", lang, None)
        context["viewer_assets_built"] = False
        html = template("viewer.html").render(context)
        assert "viewer assets not built: run make assets" in html
        assert "cornerstone" not in html
    assert viewer.assets_built(Path("/nonexistent")) is False


@pytest.fixture(scope="module")
def formats(hub: HubUnderTest, hospital_a: Client, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A study of the pixel formats the browser decodes itself: series 1 a three-frame MR
    (frame k adds 100·k), series 2 a MONOCHROME1 CT, series 3 an RGB ultrasound image,
    series 4 an MR stored big endian (the hub sends its frames little endian)."""
    directory = tmp_path_factory.mktemp("viewer-formats")
    study_uid = generate_uid()
    patient = {"PatientID": f"F-{unique()}", "PatientName": "LI^NA"}
    mr = pydicom.dcmread(str(sample_file("MR_small.dcm"))).pixel_array
    frames = np.stack([(mr.astype(np.int32) + 100 * k).astype(mr.dtype) for k in range(1, 4)])
    series = [generate_uid() for _ in range(4)]
    files = [
        fresh_copy(
            "MR_small.dcm",
            directory,
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=series[0],
            SeriesNumber=1,
            NumberOfFrames=3,
            PixelData=frames.tobytes(),
            **patient,
        ),
        fresh_copy(
            "CT_small.dcm",
            directory,
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=series[1],
            SeriesNumber=2,
            PhotometricInterpretation="MONOCHROME1",
            **patient,
        ),
        fresh_copy(
            "examples_rgb_color.dcm",
            directory,
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=series[2],
            SeriesNumber=3,
            **patient,
        ),
        fresh_copy(
            "MR_small_bigendian.dcm",
            directory,
            StudyInstanceUID=study_uid,
            SeriesInstanceUID=series[3],
            SeriesNumber=4,
            **patient,
        ),
    ]
    stow(hub, hospital_a, files)
    return {"study": study_uid, "series": series, "mr": mr}


def displayed(page: Any) -> dict[str, Any]:
    """The displayed cornerstone image: color, size, first pixel's values, and the viewport."""
    return dict(
        page.evaluate(
            """() => {
                const element = document.querySelector('.viewer-viewport');
                const image = cornerstone.getImage(element);
                const data = image.getPixelData();
                return {imageId: image.imageId, color: image.color, rows: image.rows,
                        columns: image.columns, first: Array.from(data.slice(0, 4)),
                        invert: cornerstone.getViewport(element).invert};
            }"""
        )
    )


def test_multi_frame_monochrome1_rgb_and_big_endian_decoded_in_the_browser(
    page: Any, hub: HubUnderTest, admin: Client, formats: dict[str, Any], screenshot: Any
) -> None:
    open_viewer(page, hub, admin, formats["study"], "zh-CN")
    mr = formats["mr"]
    items = page.locator(".viewer-series-item")
    assert items.count() == 4

    # A multi-frame instance: one image per frame, scrolled by frame (End = the last).
    assert state(page)["count"] == 3
    assert displayed(page)["first"][0] == int(mr[0, 0]) + 100
    page.keyboard.press("End")
    wait_until(page, "s.index === 2 && s.frame === 3")
    wait_for_first_value(page, int(mr[0, 0]) + 300)
    assert "帧 3 / 3" in page.inner_text('[data-overlay="image"]')
    screenshot(page, "multi-frame")

    # MONOCHROME1: shown inverted.
    items.nth(1).click()
    wait_until(page, f"s.seriesUid === '{formats['series'][1]}' && s.invert === true")
    assert displayed(page)["invert"] is True
    screenshot(page, "monochrome1")

    # RGB: a colour image whose first pixel is the stored one (RGBA for cornerstone).
    items.nth(2).click()
    wait_until(page, f"s.seriesUid === '{formats['series'][2]}' && s.invert === false")
    rgb = pydicom.dcmread(str(sample_file("examples_rgb_color.dcm"))).pixel_array
    shown = displayed(page)
    assert shown["color"] is True
    assert (shown["rows"], shown["columns"]) == rgb.shape[:2]
    assert shown["first"] == [*(int(v) for v in rgb[0, 0]), 255]
    assert not state(page)["renderedFallback"]
    screenshot(page, "rgb")

    # Big endian storage: the values arrive right.
    items.nth(3).click()
    wait_until(page, f"s.seriesUid === '{formats['series'][3]}'")
    big = pydicom.dcmread(str(sample_file("MR_small_bigendian.dcm"))).pixel_array
    wait_for_first_value(page, int(big[0, 0]))
    assert not state(page)["renderedFallback"]
    assert page.yijian_errors == [], page.yijian_errors


def test_a_refused_token_is_said_on_the_page(
    page: Any, hub: HubUnderTest, admin: Client, study: dict[str, str], screenshot: Any
) -> None:
    open_viewer(page, hub, admin, study["study"], "zh-CN", token="not-a-token", wait=False)
    status = page.locator(".viewer-status.viewer-error")
    status.wait_for()
    assert "影像加载失败" in status.inner_text()
    assert "(401)" in status.inner_text()
    assert "访问凭证无效或已过期" in status.inner_text()
    assert "401" in state(page)["error"]
    assert page.locator(".viewer-viewport").get_attribute("data-ready") == "false"
    assert state(page)["ready"] is False
    screenshot(page, "refused")
