"""ORU^R01 messages shaped like a Chinese hospital LIS sends them, for tests and benchmarks.

Segments end with CR; the text is encoded as the feed declares (GBK or UTF-8). Values,
units and reference ranges are the kind a 血常规 or 生化 panel carries.
"""

from __future__ import annotations

from dataclasses import dataclass

# local code, Chinese name, value, unit, reference range, abnormal flag
CBC: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("WBC", "白细胞计数", "6.52", "10^9/L", "3.5-9.5", "N"),
    ("RBC", "红细胞计数", "4.21", "10^12/L", "3.8-5.1", "N"),
    ("HGB", "血红蛋白", "118", "g/L", "115-150", "N"),
    ("HCT", "红细胞压积", "36.2", "%", "35-45", "N"),
    ("PLT", "血小板计数", "356", "10^9/L", "125-350", "H"),
    ("NEUT%", "中性粒细胞百分比", "71.3", "%", "40-75", "N"),
    ("LYMPH%", "淋巴细胞百分比", "19.8", "%", "20-50", "L"),
)
CHEMISTRY: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("ALT", "丙氨酸氨基转移酶", "35", "U/L", "7-40", "N"),
    ("AST", "天门冬氨酸氨基转移酶", "28", "U/L", "13-35", "N"),
    ("CREA", "肌酐", "68", "μmol/L", "41-73", "N"),
    ("GLU", "葡萄糖", "6.8", "mmol/L", "3.9-6.1", "H"),
    ("K", "钾", "4.1", "mmol/L", "3.5-5.3", "N"),
)


@dataclass(frozen=True)
class Person:
    mrn: str
    name: str
    gender: str  # M / F
    birth: str  # YYYYMMDD
    resident_id: str = ""
    phone: str = ""


def oru(
    control_id: str,
    facility: str,
    person: Person,
    filler: str,
    results: tuple[tuple[str, str, str, str, str, str], ...] = CBC,
    *,
    encoding: str = "utf-8",
    version: str = "2.4",
    status: str = "F",
    observed: str = "20261120083000",
    panel: tuple[str, str] = ("CBC", "血常规"),
    authority: str = "",
    placer: str = "",
) -> bytes:
    """One ORU^R01 with one order (OBR) and one OBX per result."""
    authority = authority or facility
    charset = {"utf-8": "UNICODE UTF-8", "gbk": "GBK", "gb18030": "GB 18030-2000"}[encoding]
    ids = f"{person.mrn}^^^{authority}^MR"
    if person.resident_id:
        ids += f"~{person.resident_id}^^^SFZ^NNCHN"
    segments = [
        f"MSH|^~\\&|LIS|{facility}|YIJIAN|HUB|{observed}||ORU^R01|{control_id}|P|{version}"
        f"|||AL|NE||{charset}",
        f"PID|1||{ids}||{person.name}||{person.birth}|{person.gender}|||"
        f"杭州市上城区解放路88号^^杭州市^浙江省^310000||{person.phone}",
        f"ORC|RE|{placer}|{filler}",
        f"OBR|1|{placer}|{filler}|{panel[0]}^{panel[1]}|||{observed}|||||||{observed}|BLD^血液"
        f"|||||||{observed}||LAB|{status}",
    ]
    for index, (code, name, value, unit, reference, flag) in enumerate(results, start=1):
        segments.append(
            f"OBX|{index}|NM|{code}^{name}||{value}|{unit}|{reference}|{flag}|||{status}"
            f"|||{observed}"
        )
    return ("\r".join(segments) + "\r").encode(encoding)
