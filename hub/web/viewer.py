"""The in-browser DICOM viewer page: its template context and whether its assets exist.

The viewer itself is JavaScript (``static/viewer/viewer.js`` on cornerstone-core/-tools from
npm, copied to ``static/vendor/`` by ``make assets``); it reads the study through the hub's
DICOMweb with a short-lived bearer token the page is given. This module only prepares what
``templates/viewer.html`` needs, including the interface texts in the page's language (the
viewer's few strings live here, in Chinese and English, so the JavaScript holds none).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

STATIC_DIR = Path(__file__).resolve().parent / "static"

# What viewer.html loads from static/vendor/ (build_assets.mjs copies them there).
VENDOR_FILES = (
    "hammer.min.js",
    "cornerstoneMath.min.js",
    "cornerstone.min.js",
    "cornerstoneTools.min.js",
)

# Window/level presets in Hounsfield units: (key, center, width).
PRESETS = (
    ("lung", -600, 1500),
    ("mediastinum", 50, 350),
    ("bone", 300, 2000),
    ("brain", 40, 80),
)

# key → (Simplified Chinese, English). zh-CN is the default language.
LABELS: dict[str, tuple[str, str]] = {
    "title": ("影像浏览", "Image viewer"),
    "back": ("返回", "Back"),
    "series": ("序列", "Series"),
    "tools": ("工具", "Tools"),
    "tool_wwwc": ("窗宽窗位", "Window/level"),
    "tool_zoom": ("缩放", "Zoom"),
    "tool_pan": ("平移", "Pan"),
    "tool_scroll": ("翻页", "Scroll"),
    "reset": ("复位", "Reset"),
    "invert": ("反色", "Invert"),
    "presets": ("窗宽预设", "W/L presets"),
    "preset_lung": ("肺窗", "Lung"),
    "preset_mediastinum": ("纵隔窗", "Mediastinum"),
    "preset_bone": ("骨窗", "Bone"),
    "preset_brain": ("脑窗", "Brain"),
    "image": ("图像", "Image"),
    "frame": ("帧", "Frame"),
    "zoom": ("缩放", "Zoom"),
    "loading": ("正在加载…", "Loading…"),
    "no_series": ("该检查没有可显示的图像序列。", "This study has no image series to show."),
    "load_failed": ("影像加载失败", "The images could not be loaded"),
    "unauthorized": (
        "访问凭证无效或已过期，请刷新页面",
        "The access token is invalid or has expired: reload the page",
    ),
    "not_visible": (
        "未找到该检查，或您无权查看",
        "The study was not found, or you may not see it",
    ),
    "rendered_fallback": (
        "服务器渲染图像（浏览器无法解码此压缩格式，窗宽窗位作用于渲染值）",
        "Server-rendered image (the browser cannot decode this compression; "
        "window/level applies to rendered values)",
    ),
    "help": (
        "左键拖动：窗宽窗位　右键拖动：缩放　中键拖动：平移　滚轮或 ↑/↓：翻页　"
        "R：复位　I：反色　1–4：预设",
        "Left drag: window/level · right drag: zoom · middle drag: pan · wheel or ↑/↓: "
        "scroll · R: reset · I: invert · 1–4: presets",
    ),
    "assets_missing": (
        "影像浏览器的前端资源尚未构建：请运行 make assets",
        "viewer assets not built: run make assets",
    ),
}


def labels(lang: str) -> dict[str, str]:
    """The viewer's texts in ``lang`` (English for "en", otherwise Simplified Chinese)."""
    column = 1 if lang == "en" else 0
    return {key: texts[column] for key, texts in LABELS.items()}


def assets_built(static_dir: Path = STATIC_DIR) -> bool:
    """True when every vendor file the viewer loads exists (``make assets`` has run)."""
    vendor = static_dir / "vendor"
    return all((vendor / name).is_file() for name in VENDOR_FILES)


def viewer_context(
    study_uid: str,
    dicomweb_base: str,
    access_token: str,
    lang: str,
    back_url: str | None,
) -> dict[str, Any]:
    """The variables ``viewer.html`` renders with.

    ``dicomweb_base`` is the DICOMweb root as the browser reaches it (e.g. "/dicomweb", same
    origin as the page); ``access_token`` a short-lived hub token the page sends as
    ``Authorization: Bearer``; ``back_url`` where the back link goes (None: no link)."""
    lang = "en" if lang == "en" else "zh-CN"
    texts = labels(lang)
    return {
        "study_uid": study_uid,
        "dicomweb_base": dicomweb_base.rstrip("/"),
        "access_token": access_token,
        "lang": lang,
        "back_url": back_url,
        "t": texts,
        "viewer_labels": texts,
        "presets": [
            {"key": key, "center": center, "width": width, "label": texts[f"preset_{key}"]}
            for key, center, width in PRESETS
        ],
        "vendor_files": VENDOR_FILES,
        "viewer_assets_built": assets_built(),
    }
