"""Unit text as Chinese LIS send it (OBX-6) → UCUM code.

A code map's target may name the UCUM unit of a mapped code; this table covers everything
else, so that a quantity is comparable across hospitals even before its code is mapped. The
lookup ignores case, spaces, full-width forms and the micro sign variants (µ U+00B5,
μ U+03BC, u), and accepts the usual ways of writing powers of ten (10^9/L, 10E9/L, ×10^9/L,
10*9/L). Units not in the table get no UCUM code: the text is kept, nothing is guessed.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

_TABLE: dict[str, str] = {
    # counts
    "10^9/l": "10*9/L",
    "10^12/l": "10*12/L",
    "10^6/l": "10*6/L",
    "10^3/ul": "10*3/uL",
    "10^6/ul": "10*6/uL",
    "10^3/mm3": "10*3/uL",
    "/ul": "/uL",
    "个/ul": "/uL",
    "cells/ul": "/uL",
    "/hp": "/[HPF]",
    "/hpf": "/[HPF]",
    "个/hp": "/[HPF]",
    "个/hpf": "/[HPF]",
    "/lp": "/[LPF]",
    "/lpf": "/[LPF]",
    "个/lp": "/[LPF]",
    "/l": "/L",
    # mass and substance concentrations
    "g/l": "g/L",
    "g/dl": "g/dL",
    "mg/l": "mg/L",
    "mg/dl": "mg/dL",
    "ug/l": "ug/L",
    "ug/dl": "ug/dL",
    "ug/ml": "ug/mL",
    "ng/l": "ng/L",
    "ng/ml": "ng/mL",
    "ng/dl": "ng/dL",
    "pg/ml": "pg/mL",
    "mol/l": "mol/L",
    "mmol/l": "mmol/L",
    "umol/l": "umol/L",
    "nmol/l": "nmol/L",
    "pmol/l": "pmol/L",
    "mmol/mol": "mmol/mol",
    "mg/24h": "mg/(24.h)",
    "g/24h": "g/(24.h)",
    "mmol/24h": "mmol/(24.h)",
    "mosm/kg": "mosm/kg",
    "mosm/kgh2o": "mosm/kg",
    # catalytic and arbitrary units
    "u/l": "U/L",
    "iu/l": "[IU]/L",
    "u/ml": "U/mL",
    "ku/l": "kU/L",
    "iu/ml": "[IU]/mL",
    "kiu/l": "k[IU]/L",
    "miu/l": "m[IU]/L",
    "miu/ml": "m[IU]/mL",
    "uiu/ml": "u[IU]/mL",
    "uiu/l": "u[IU]/L",
    "au/ml": "[arb'U]/mL",
    "s/co": "{s_co_ratio}",
    "coi": "{COI}",
    "index": "{index}",
    # volumes, fractions, times, rates
    "fl": "fL",
    "pg": "pg",
    "%": "%",
    "ratio": "{ratio}",
    "s": "s",
    "sec": "s",
    "秒": "s",
    "min": "min",
    "分钟": "min",
    "h": "h",
    "小时": "h",
    "mm/h": "mm/h",
    "mm/1h": "mm/h",
    "mm/hr": "mm/h",
    "ml/min": "mL/min",
    "ml/min/1.73m2": "mL/min/{1.73_m2}",
    "ml/min/1.73m^2": "mL/min/{1.73_m2}",
    "ml/min/1.73㎡": "mL/min/{1.73_m2}",
    "ml/min/1.73m²": "mL/min/{1.73_m2}",
    "mmhg": "mm[Hg]",
    "kpa": "kPa",
    "ml": "mL",
    "l": "L",
    "g": "g",
    "kg": "kg",
    "cm": "cm",
    "mm": "mm",
    "℃": "Cel",
    "°c": "Cel",
    "cel": "Cel",
    "bpm": "/min",
    "次/分": "/min",
    "ph": "[pH]",
}


_POWER = re.compile(r"10(?:\^|\*\*|\*|e\+?)(\d+)")


def _key(unit: str) -> str:
    text = unicodedata.normalize("NFKC", unit)  # full width → ASCII; µ → μ
    text = "".join(text.split()).lower().replace("μ", "u")
    text = text.lstrip("×x*")  # ×10^9/L, x10^9/L
    return _POWER.sub(r"10^\1", text)


@lru_cache(maxsize=1024)
def ucum(unit: str) -> str | None:
    """The UCUM code for a unit as written by a hospital, or None when it is not known."""
    if not unit or not unit.strip():
        return None
    return _TABLE.get(_key(unit))
