"""How a verdict reads to a doctor: CDS Hooks cards, and the result lines they show.

Text is Simplified Chinese first; English is given beside it where it helps, and in full in
each card's ``extension`` (``summaryEn``/``detailEn``) for clients that show English.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, tzinfo
from typing import Any

from hub.recognition.rules import Outcome, Verdict

SOURCE_LABEL = "医检互认平台 Yijian Hub"
SUMMARY_LIMIT = 140  # CDS Hooks: "SHOULD be less than 140 characters"
DECLINE_REASONS_URL = "https://yijian-hub.org/fhir/CodeSystem/recognition-decline-reason"
ITEM_SYSTEM = "https://yijian-hub.org/fhir/CodeSystem/recognition-item"
EXTENSION_PREFIX = "org.yijian-hub."


def result_lines(verdict: Verdict, contents: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per value (lab) or the report's conclusion (imaging), in the item's order."""
    if verdict.result is None:
        return []
    lines: list[str] = []
    order = {c.token: n for n, c in enumerate(verdict.item.components)} if verdict.item else {}
    members = sorted(verdict.result.members, key=lambda m: order.get(m.token, len(order)))
    seen: set[str] = set()
    for member in members:
        if member.reference in seen:
            continue
        seen.add(member.reference)
        resource = contents.get(member.reference)
        if resource is None:
            continue
        if member.res_type == "Observation":
            lines.append(_observation_line(resource))
        elif member.res_type == "DiagnosticReport":
            for ref in resource.get("result") or []:
                listed = contents.get(str(ref.get("reference")))
                if listed is not None and ref.get("reference") not in seen:
                    seen.add(str(ref["reference"]))
                    lines.append(_observation_line(listed))
            lines.extend(_report_lines(resource))
        elif member.res_type == "ImagingStudy" and resource.get("description"):
            lines.append(f"检查 Study: {resource['description']}")
    return [line for line in lines if line]


def _observation_line(resource: Mapping[str, Any]) -> str:
    name = _concept_text(resource.get("code"))
    value = _value_text(resource)
    flags = " ".join(
        c.get("code", "")
        for concept in resource.get("interpretation") or []
        for c in concept.get("coding") or []
        if c.get("code") not in (None, "N")
    )
    ranges = resource.get("referenceRange") or []
    reference = _range_text(ranges[0]) if ranges else ""
    parts = [f"{name}: {value}"]
    if flags:
        parts.append(f"[{flags}]")
    if reference:
        parts.append(f"(参考 ref {reference})")
    return " ".join(parts)


def _report_lines(resource: Mapping[str, Any]) -> list[str]:
    lines = []
    if resource.get("conclusion"):
        lines.append(f"结论 Conclusion: {_clip(str(resource['conclusion']), 400)}")
    for form in resource.get("presentedForm") or []:
        if form.get("title"):
            lines.append(f"报告 Report: {form['title']}")
            break
    return lines


def _concept_text(concept: Any) -> str:
    if not isinstance(concept, Mapping):
        return "?"
    codings = [c for c in concept.get("coding") or [] if isinstance(c, Mapping)]
    local = next(
        (
            c.get("display")
            for c in codings
            if c.get("system") != "http://loinc.org" and c.get("display")
        ),
        None,
    )
    return str(
        concept.get("text")
        or local
        or next((c.get("display") or c.get("code") for c in codings), "?")
    )


def _value_text(resource: Mapping[str, Any]) -> str:
    if "valueQuantity" in resource:
        quantity = resource["valueQuantity"]
        unit = quantity.get("unit") or quantity.get("code") or ""
        return f"{quantity.get('comparator', '')}{quantity.get('value', '')} {unit}".strip()
    if "valueString" in resource:
        return _clip(str(resource["valueString"]), 120)
    if "valueCodeableConcept" in resource:
        return _concept_text(resource["valueCodeableConcept"])
    if "valueRatio" in resource:
        ratio = resource["valueRatio"]
        return (
            f"{ratio.get('numerator', {}).get('value')}:{ratio.get('denominator', {}).get('value')}"
        )
    if "valueRange" in resource:
        return _range_text(resource["valueRange"])
    return "—"


def _range_text(value: Mapping[str, Any]) -> str:
    if value.get("text"):
        return str(value["text"])
    low, high = value.get("low", {}).get("value"), value.get("high", {}).get("value")
    if low is not None and high is not None:
        return f"{low}-{high}"
    if low is not None:
        return f"≥{low}"
    if high is not None:
        return f"≤{high}"
    return ""


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _when(verdict: Verdict, zone: tzinfo) -> str:
    effective = verdict.result.effective if verdict.result else None
    return effective.astimezone(zone).date().isoformat() if effective else "?"


def summary(verdict: Verdict, zone: tzinfo) -> tuple[str, str]:
    """(Chinese, English) one-line summaries of a reusable verdict."""
    place = verdict.institution.name if verdict.institution else "?"
    when = _when(verdict, zone)
    zh = (
        f"该患者 {verdict.window_days} 天内已有可互认结果：{verdict.name_zh} "
        f"({verdict.label}, {place} {when})"
    )
    en = (
        f"Reusable result within {verdict.window_days} days: {verdict.name_en} "
        f"({verdict.label}, {place} {when})"
    )
    return _clip(zh, SUMMARY_LIMIT), _clip(en, SUMMARY_LIMIT)


def reuse_card(
    verdict: Verdict,
    card_id: str,
    contents: Mapping[str, Mapping[str, Any]],
    *,
    link: str,
    decline_reasons: Mapping[str, Mapping[str, Any]],
    source_url: str,
    zone: tzinfo,
) -> dict[str, Any]:
    """The card for one reusable result: summary, values, a link, and a suggestion that
    deletes the redundant draft order (when the order has an id)."""
    zh, en = summary(verdict, zone)
    lines = result_lines(verdict, contents)
    valid_until = (
        verdict.valid_until.astimezone(zone).date().isoformat() if verdict.valid_until else "?"
    )
    detail = "\n".join(
        [
            f"**{verdict.name_zh} {verdict.name_en}** · {verdict.label} · "
            f"{verdict.institution.name if verdict.institution else '?'} · {_when(verdict, zone)}",
            "",
            *(f"- {line}" for line in lines),
            "",
            f"有效期至 Valid until {valid_until}。是否采用由医生决定；不采用请选择原因。"
            " The doctor decides; a decline needs a reason.",
        ]
    )
    card: dict[str, Any] = {
        "uuid": card_id,
        "summary": zh,
        "detail": detail,
        "indicator": "info",
        "source": {
            "label": SOURCE_LABEL,
            "url": source_url,
            "topic": {
                "system": ITEM_SYSTEM,
                "code": verdict.item.id if verdict.item else verdict.requested.code,
                "display": verdict.name_zh,
            },
        },
        "links": [{"label": "查看结果 View the result", "url": link, "type": "absolute"}],
        "overrideReasons": [
            {
                "system": DECLINE_REASONS_URL,
                "code": code,
                "display": _bilingual(concept),
            }
            for code, concept in decline_reasons.items()
        ],
        "extension": {
            EXTENSION_PREFIX + "summaryEn": en,
            EXTENSION_PREFIX + "outcome": str(verdict.outcome),
            EXTENSION_PREFIX + "result": verdict.result.primary.reference
            if verdict.result
            else None,
            EXTENSION_PREFIX + "validUntil": valid_until,
        },
    }
    if (verdict.requested.order or "").startswith("ServiceRequest/"):
        card["selectionBehavior"] = "at-most-one"
        card["suggestions"] = [
            {
                "label": f"撤销重复医嘱：{verdict.name_zh} Remove the duplicate order",
                "uuid": f"{card_id}-delete",
                "isRecommended": True,
                "actions": [
                    {
                        "type": "delete",
                        "description": f"采用既往结果，撤销 {verdict.name_zh} 医嘱"
                        f" (reuse the result; remove the {verdict.name_en} order)",
                        "resourceId": verdict.requested.order,
                    }
                ],
            }
        ]
    return card


def explanation_card(
    verdicts: Sequence[Verdict], card_id: str, source_url: str, zone: tzinfo
) -> dict[str, Any] | None:
    """One info card listing ordered items that have an earlier result which cannot be
    reused, and why (so a doctor knows it was considered: "CT 胸部: 已超过30天有效期")."""
    shown = [
        v
        for v in verdicts
        if v.outcome not in (Outcome.REUSABLE, Outcome.NO_RESULT, Outcome.NOT_RECOGNISABLE)
    ]
    if not shown:
        return None
    names = "、".join(v.name_zh for v in shown)
    lines = [f"- {v.name_zh} {v.name_en}: {v.reason}" for v in shown]
    return {
        "uuid": card_id,
        "summary": _clip(f"以下项目的既往结果不可互认：{names}", SUMMARY_LIMIT),
        "detail": "\n".join(lines),
        "indicator": "info",
        "source": {"label": SOURCE_LABEL, "url": source_url},
        "extension": {
            EXTENSION_PREFIX + "summaryEn": _clip(
                "Earlier results that cannot be reused: " + ", ".join(v.name_en for v in shown),
                SUMMARY_LIMIT,
            ),
            EXTENSION_PREFIX + "outcomes": {
                (v.item.id if v.item else v.requested.code): str(v.outcome) for v in shown
            },
        },
    }


def identity_card(problem: str) -> dict[str, Any]:
    """A warning instead of reuse cards: the patient's identifiers name different people."""
    return {
        "uuid": str(uuid.uuid4()),
        "summary": "患者身份不唯一，未进行互认检查 (identifiers match different patients)",
        "detail": problem,
        "indicator": "warning",
        "source": {"label": SOURCE_LABEL},
    }


def _bilingual(concept: Mapping[str, Any]) -> str:
    zh = next(
        (
            d["value"]
            for d in concept.get("designation") or []
            if d.get("language", "").startswith("zh")
        ),
        None,
    )
    return f"{zh} {concept['display']}" if zh else str(concept["display"])


def at_text(moment: datetime, zone: tzinfo) -> str:
    return moment.astimezone(zone).isoformat(timespec="seconds")
