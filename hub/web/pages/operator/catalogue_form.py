"""A recognition catalogue item ⇄ the fields of the edit form.

Codes are edited as text, one per line: ``[system|]code [display]`` — the system defaults
to LOINC (imaging body sites: SNOMED CT) and may be written ``loinc``, ``snomed``, ``dcm``
or a URI. Imaging targets are lines ``MODALITY: site; site`` (sites as codes above), region
windows lines ``region=days``. The item's own rules (``CatalogueItem``) then validate the
whole; this module only turns text into the item's JSON and says which line it cannot read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hub.recognition.catalogue import (
    DICOM_MODALITY,
    LOINC,
    SNOMED,
    CatalogueItem,
    Code,
)

SYSTEM_ALIASES = {"loinc": LOINC, "snomed": SNOMED, "sct": SNOMED, "dcm": DICOM_MODALITY}
SHORT_NAMES = {LOINC: "loinc", SNOMED: "snomed", DICOM_MODALITY: "dcm"}
CONDITIONS = ("abnormal", "critical")
SCOPES = ("institution", "community", "city", "province", "national")


class FormError(ValueError):
    """A field the form cannot read; the message names the field and the line. ``template``
    is the Chinese source with ``{placeholders}`` for ``values``; ``field`` (Chinese) is
    translated too, the values (what was typed) are not."""

    def __init__(self, template: str, field: str = "", **values: object) -> None:
        self.template, self.field, self.values = template, field, values
        super().__init__(template.format(field=field, **values))

    def message(self, _: Callable[..., str]) -> str:
        """The message in the language of ``_`` (a ``hub.web.i18n.translator``)."""
        return _(self.template, field=_(self.field) if self.field else "", **self.values)


# -- item → form ---------------------------------------------------------------------------------


def code_line(code: Code, default_system: str = LOINC) -> str:
    system = "" if code.system == default_system else SHORT_NAMES.get(code.system, code.system)
    text = f"{system}|{code.code}" if system else code.code
    return f"{text} {code.display}" if code.display else text


def item_form(item: CatalogueItem) -> dict[str, Any]:
    """The form's field values for an item."""
    return {
        "id": item.id,
        "category": item.category,
        "name_zh": item.name.zh,
        "name_en": item.name.en,
        "codes": "\n".join(code_line(c) for c in item.codes),
        "components": "\n".join(code_line(c) for c in item.components),
        "core_components": "\n".join(code_line(c) for c in item.core_components),
        "imaging": "\n".join(
            f"{target.modality}: " + "; ".join(code_line(s, SNOMED) for s in target.body_sites)
            for target in item.imaging
        ),
        "validity_days": str(item.validity_days),
        "region_validity_days": "\n".join(
            f"{region}={days}" for region, days in sorted(item.region_validity_days.items())
        ),
        "scope": item.scope,
        "qc_required": item.quality_control.required,
        "qc_discipline": item.quality_control.discipline or "",
        "price_cny": f"{item.price_cny:g}",
        "not_suggested_when": list(item.not_suggested_when),
        "requires_report": item.requires_report,
        "notes": item.notes or "",
    }


def blank_form() -> dict[str, Any]:
    """The fields of a new item."""
    return {
        "id": "",
        "category": "lab",
        "name_zh": "",
        "name_en": "",
        "codes": "",
        "components": "",
        "core_components": "",
        "imaging": "",
        "validity_days": "30",
        "region_validity_days": "",
        "scope": "city",
        "qc_required": True,
        "qc_discipline": "",
        "price_cny": "0",
        "not_suggested_when": ["critical"],
        "requires_report": True,
        "notes": "",
    }


# -- form → item ---------------------------------------------------------------------------------


def parse_code(text: str, default_system: str = LOINC) -> dict[str, str]:
    """``[system|]code [display]`` → a Code's JSON."""
    head, _, display = text.strip().partition(" ")
    system, bar, code = head.rpartition("|")
    if not bar:
        system, code = default_system, head
    else:
        system = SYSTEM_ALIASES.get(system.lower(), system)
    if not code or not system:
        raise ValueError(text)
    found = {"system": system, "code": code}
    if display.strip():
        found["display"] = display.strip()
    return found


def _codes(form: Mapping[str, Any], field: str, label: str) -> list[dict[str, str]]:
    out = []
    for number, line in enumerate(str(form.get(field) or "").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(parse_code(line))
        except ValueError:
            raise FormError(
                "{field} 第 {number} 行无法识别：{line}", label, number=number, line=line.strip()
            ) from None
    return out


def _imaging(form: Mapping[str, Any]) -> list[dict[str, Any]]:
    targets = []
    for number, line in enumerate(str(form.get("imaging") or "").splitlines(), 1):
        if not line.strip():
            continue
        modality, _, sites = line.partition(":")
        try:
            body_sites = [parse_code(s, SNOMED) for s in sites.split(";") if s.strip()]
        except ValueError:
            raise FormError(
                "影像部位 第 {number} 行无法识别：{line}", number=number, line=line.strip()
            ) from None
        if not modality.strip():
            raise FormError(
                "影像部位 第 {number} 行缺少检查类型（如 CT）：{line}",
                number=number,
                line=line.strip(),
            )
        targets.append({"modality": modality.strip().upper(), "body_sites": body_sites})
    return targets


def _regions(form: Mapping[str, Any]) -> dict[str, int]:
    regions = {}
    for number, line in enumerate(str(form.get("region_validity_days") or "").splitlines(), 1):
        if not line.strip():
            continue
        region, eq, days = line.partition("=")
        if not eq or not days.strip().isdigit():
            raise FormError(
                "地区有效期 第 {number} 行应为 地区代码=天数：{line}",
                number=number,
                line=line.strip(),
            )
        regions[region.strip()] = int(days.strip())
    return regions


def _number(form: Mapping[str, Any], field: str, label: str, kind: type) -> Any:
    text = str(form.get(field) or "").strip()
    try:
        return kind(text)
    except ValueError:
        if not text:
            raise FormError("{field} 应为数字（不能为空）", label) from None
        raise FormError("{field} 应为数字：{text}", label, text=text) from None


def item_json(item_id: str, form: Mapping[str, Any], conditions: list[str]) -> dict[str, Any]:
    """The item's JSON from the form's fields (``CatalogueItem`` validates it afterwards)."""
    discipline = str(form.get("qc_discipline") or "").strip()
    return {
        "id": item_id,
        "category": str(form.get("category") or ""),
        "name": {
            "zh": str(form.get("name_zh") or "").strip(),
            "en": str(form.get("name_en") or "").strip(),
        },
        "codes": _codes(form, "codes", "编码"),
        "components": _codes(form, "components", "组成项目"),
        "core_components": _codes(form, "core_components", "核心组成项目"),
        "imaging": _imaging(form),
        "validity_days": _number(form, "validity_days", "有效期（天）", int),
        "region_validity_days": _regions(form),
        "scope": str(form.get("scope") or ""),
        "quality_control": {
            "required": bool(form.get("qc_required")),
            **({"discipline": discipline} if discipline else {}),
        },
        "price_cny": _number(form, "price_cny", "价格（元）", float),
        "not_suggested_when": [c for c in conditions if c in CONDITIONS],
        "requires_report": bool(form.get("requires_report")),
        **({"notes": str(form["notes"]).strip()} if str(form.get("notes") or "").strip() else {}),
    }
