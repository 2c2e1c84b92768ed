"""Realistic, synthetic Chinese demographics for tests and benchmarks (not a test module).

Everything is drawn from ``random.Random(seed)``, so a seed always gives the same people.
Surnames follow their rough frequency in China, given names are one or two characters from
gendered pools, resident IDs are valid (real area code, birth date, sequence with the gender's
parity, ISO 7064 MOD 11-2 check character computed here independently of the hub), addresses
are the real province, city and district of the ID's area code, and phones are 11-digit mobiles.

Besides random people it makes the hard cases of patient matching: twins (same family, birth
date, address and phone), namesakes (same name and birth date, otherwise unrelated) and
homophone typos of a given name (伟 → 玮), the commonest error at a registration desk.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import random
from dataclasses import dataclass
from typing import Any

from pypinyin import Style, lazy_pinyin

RESIDENT_ID_SYSTEM = "https://yijian-hub.org/fhir/sid/resident-id"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"

# Surname → rough share of the population, in per mille.
SURNAMES: tuple[tuple[str, float], ...] = (
    ("王", 71),
    ("李", 70),
    ("张", 67),
    ("刘", 54),
    ("陈", 45),
    ("杨", 31),
    ("黄", 22),
    ("赵", 20),
    ("吴", 19),
    ("周", 19),
    ("徐", 13),
    ("孙", 13),
    ("马", 12),
    ("朱", 12),
    ("胡", 11),
    ("郭", 11),
    ("何", 10),
    ("林", 10),
    ("高", 10),
    ("罗", 9),
    ("郑", 8),
    ("梁", 8),
    ("谢", 7),
    ("宋", 6),
    ("唐", 6),
    ("许", 6),
    ("韩", 6),
    ("冯", 5),
    ("邓", 5),
    ("曹", 5),
    ("彭", 5),
    ("曾", 5),
    ("肖", 5),
    ("田", 5),
    ("董", 5),
    ("袁", 4),
    ("潘", 4),
    ("于", 4),
    ("蒋", 4),
    ("蔡", 4),
    ("余", 4),
    ("杜", 4),
    ("叶", 4),
    ("程", 4),
    ("苏", 3),
    ("魏", 3),
    ("吕", 3),
    ("丁", 3),
    ("任", 3),
    ("沈", 3),
    ("姚", 3),
    ("卢", 3),
    ("姜", 3),
    ("崔", 3),
    ("钟", 3),
    ("谭", 3),
    ("陆", 3),
    ("汪", 3),
    ("范", 3),
    ("金", 3),
    ("石", 3),
    ("廖", 2),
    ("贾", 2),
    ("夏", 2),
    ("韦", 2),
    ("付", 2),
    ("方", 2),
    ("白", 2),
    ("邹", 2),
    ("孟", 2),
    ("熊", 2),
    ("秦", 2),
    ("邱", 2),
    ("江", 2),
    ("尹", 2),
    ("薛", 2),
    ("闫", 2),
    ("段", 2),
    ("雷", 2),
    ("侯", 2),
    ("龙", 2),
    ("史", 2),
    ("陶", 2),
    ("黎", 2),
    ("贺", 2),
    ("顾", 1),
    ("毛", 1),
    ("郝", 1),
    ("龚", 1),
    ("邵", 1),
    ("万", 1),
    ("钱", 1),
    ("严", 1),
    ("覃", 1),
    ("武", 1),
    ("戴", 1),
    ("莫", 1),
    ("孔", 1),
    ("向", 1),
    ("汤", 1),
    ("欧阳", 0.5),
    ("司马", 0.1),
    ("诸葛", 0.1),
    ("上官", 0.1),
)
COMPOUND_SURNAMES = tuple(name for name, _ in SURNAMES if len(name) == 2)

# Characters of the same toneless pinyin that are mistaken for one another in names.
HOMOPHONES: tuple[str, ...] = (
    "伟玮薇",
    "明铭鸣",
    "丽莉俐力立",
    "静婧菁晶",
    "杰洁婕",
    "军君钧俊峻骏",
    "华桦",
    "涛韬",
    "勇咏",
    "峰锋枫凤",
    "芳方",
    "婷亭",
    "强蔷",
    "红虹鸿宏",
    "林琳霖",
    "玲铃",
    "燕艳雁",
    "敏闵",
    "辉慧惠",
    "斌彬",
    "鹏朋",
    "宇雨羽语",
    "欣新馨鑫",
    "晨辰",
    "浩昊皓",
    "佳嘉",
    "磊蕾",
    "怡宜仪艺",
    "琪琦淇祺",
    "梅玫",
    "娟鹃",
    "颖莹英",
    "萱轩宣",
    "涵晗寒",
    "超朝",
    "刚钢",
    "凯恺",
    "东冬",
    "龙隆",
    "飞菲斐",
    "健建剑",
    "思斯",
    "诗施",
    "悦月越",
    "倩茜",
    "平萍",
    "志智",
    "文雯",
    "子梓紫",
    "博波",
    "兰岚",
    "云芸",
    "洋阳",
    "彤桐",
    "瑶遥",
    "璐露",
    "蓉荣",
)

# Given-name characters; every one has a homophone above, so any generated name has a typo.
MALE_GIVEN = (
    "伟明铭杰军君俊峻骏钧华涛勇峰锋强宏鸿林霖斌彬鹏宇羽鑫新晨辰浩昊皓嘉佳磊超刚凯东龙隆飞"
    "健建剑志智文子梓博波轩宣涵洋阳荣平力立"
)
FEMALE_GIVEN = (
    "丽莉俐静婧菁晶洁婕芳婷亭蔷红虹琳玲铃燕艳雁敏慧惠雨欣馨怡宜仪琪琦淇梅玫娟鹃颖莹英萱涵晗"
    "菲思诗悦月倩茜萍雯紫梓薇玮兰岚云芸彤桐瑶璐露蓉凤枫"
)


@dataclass(frozen=True)
class Area:
    """A county-level division: its GB/T 2260 code and names."""

    code: str
    state: str
    city: str
    district: str


AREAS: tuple[Area, ...] = (
    Area("110101", "北京市", "北京市", "东城区"),
    Area("110105", "北京市", "北京市", "朝阳区"),
    Area("110108", "北京市", "北京市", "海淀区"),
    Area("120101", "天津市", "天津市", "和平区"),
    Area("310101", "上海市", "上海市", "黄浦区"),
    Area("310104", "上海市", "上海市", "徐汇区"),
    Area("310115", "上海市", "上海市", "浦东新区"),
    Area("500103", "重庆市", "重庆市", "渝中区"),
    Area("130102", "河北省", "石家庄市", "长安区"),
    Area("140105", "山西省", "太原市", "小店区"),
    Area("150102", "内蒙古自治区", "呼和浩特市", "新城区"),
    Area("210102", "辽宁省", "沈阳市", "和平区"),
    Area("220102", "吉林省", "长春市", "南关区"),
    Area("230102", "黑龙江省", "哈尔滨市", "道里区"),
    Area("320102", "江苏省", "南京市", "玄武区"),
    Area("320505", "江苏省", "苏州市", "虎丘区"),
    Area("330102", "浙江省", "杭州市", "上城区"),
    Area("330106", "浙江省", "杭州市", "西湖区"),
    Area("330203", "浙江省", "宁波市", "海曙区"),
    Area("340104", "安徽省", "合肥市", "蜀山区"),
    Area("350203", "福建省", "厦门市", "思明区"),
    Area("360102", "江西省", "南昌市", "东湖区"),
    Area("370102", "山东省", "济南市", "历下区"),
    Area("370202", "山东省", "青岛市", "市南区"),
    Area("410105", "河南省", "郑州市", "金水区"),
    Area("420102", "湖北省", "武汉市", "江岸区"),
    Area("430102", "湖南省", "长沙市", "芙蓉区"),
    Area("440104", "广东省", "广州市", "越秀区"),
    Area("440106", "广东省", "广州市", "天河区"),
    Area("440304", "广东省", "深圳市", "福田区"),
    Area("440305", "广东省", "深圳市", "南山区"),
    Area("450103", "广西壮族自治区", "南宁市", "青秀区"),
    Area("460105", "海南省", "海口市", "秀英区"),
    Area("510104", "四川省", "成都市", "锦江区"),
    Area("510107", "四川省", "成都市", "武侯区"),
    Area("520102", "贵州省", "贵阳市", "南明区"),
    Area("530102", "云南省", "昆明市", "五华区"),
    Area("540102", "西藏自治区", "拉萨市", "城关区"),
    Area("610113", "陕西省", "西安市", "雁塔区"),
    Area("620102", "甘肃省", "兰州市", "城关区"),
    Area("630102", "青海省", "西宁市", "城东区"),
    Area("640104", "宁夏回族自治区", "银川市", "兴庆区"),
    Area("650102", "新疆维吾尔自治区", "乌鲁木齐市", "天山区"),
)
AREAS_BY_CODE = {area.code: area for area in AREAS}

ROADS = (
    "中山路",
    "人民路",
    "解放路",
    "建设路",
    "和平路",
    "新华路",
    "文化路",
    "胜利路",
    "青年路",
    "朝阳路",
    "长江路",
    "黄河路",
    "复兴路",
    "光明路",
    "友谊路",
    "学府路",
    "滨江路",
    "东风路",
    "健康路",
    "幸福路",
)
MOBILE_PREFIXES = (
    *(f"13{d}" for d in range(10)),
    "150",
    "151",
    "152",
    "153",
    "155",
    "156",
    "157",
    "158",
    "159",
    *(f"18{d}" for d in range(10)),
    "191",
    "193",
    "195",
    "198",
    "199",
)
BIRTH_FROM = datetime.date(1930, 1, 1)
BIRTH_TO = datetime.date(2024, 12, 31)
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def _toneless(character: str) -> str:
    return lazy_pinyin(character, style=Style.NORMAL)[0]


def resident_check_character(body: str) -> str:
    """ISO 7064 MOD 11-2 over the first 17 digits (GB 11643-1999), written out here."""
    total = sum(int(digit) * weight for digit, weight in zip(body, _WEIGHTS, strict=True))
    check = (12 - total % 11) % 11
    return "X" if check == 10 else str(check)


def resident_id_for(area: str, birth: datetime.date, sequence: int, gender: str) -> str:
    """A valid 18-character resident ID; the sequence (1-999) must be odd for a man."""
    if len(area) != 6 or not area.isdigit():
        raise ValueError(f"area code must be 6 digits: {area!r}")
    if not 1 <= sequence <= 999:
        raise ValueError(f"sequence must be 1 to 999: {sequence}")
    if (sequence % 2 == 1) != (gender == "male") or gender not in ("male", "female"):
        raise ValueError(f"sequence {sequence} does not fit gender {gender!r} (odd = male)")
    body = f"{area}{birth:%Y%m%d}{sequence:03d}"
    return body + resident_check_character(body)


def split_name(name: str) -> tuple[str, str]:
    """(family, given) of a full name; compound surnames (欧阳) are recognised."""
    for compound in COMPOUND_SURNAMES:
        if name.startswith(compound) and len(name) > len(compound):
            return compound, name[len(compound) :]
    return name[:1], name[1:]


@dataclass
class Person:
    """One synthetic person."""

    family: str
    given: str
    gender: str
    birth_date: datetime.date
    resident_id: str
    phone: str
    address: dict[str, Any]
    insurance_number: str

    @property
    def name(self) -> str:
        """The full name as written: family name first, no space."""
        return self.family + self.given

    @property
    def area_code(self) -> str:
        """The area code of the resident ID."""
        return self.resident_id[:6]


_PERSON_FIELDS = frozenset(field.name for field in dataclasses.fields(Person))


class Demographics:
    """A deterministic generator of people; one seed, one sequence of people."""

    def __init__(self, seed: int = 0) -> None:
        self._random = random.Random(seed)
        self._used_ids: set[str] = set()
        self._surnames = [name for name, _ in SURNAMES]
        self._surname_weights = [weight for _, weight in SURNAMES]
        self._homophones = self._homophone_table()

    @staticmethod
    def _homophone_table() -> dict[str, tuple[str, ...]]:
        """Character → the others of its group that pypinyin confirms sound the same."""
        table: dict[str, tuple[str, ...]] = {}
        for group in HOMOPHONES:
            for character in group:
                sound = _toneless(character)
                others = tuple(c for c in group if c != character and _toneless(c) == sound)
                if others:
                    table[character] = others
        return table

    # -- people ----------------------------------------------------------------------------

    def person(self, **overrides: Any) -> Person:
        """A new person; any Person field may be fixed, and ``area`` (a code in AREAS).

        Fields not given are drawn so that they agree with those given: the resident ID
        carries the area, birth date and gender; the address is the area's.
        """
        unknown = set(overrides) - _PERSON_FIELDS - {"area"}
        if unknown:
            raise TypeError(f"unknown Person fields: {sorted(unknown)}")
        gender = overrides.get("gender") or self._random.choice(("male", "female"))
        family = overrides.get("family") or self._surname()
        given = overrides.get("given") or self._given(gender)
        birth = overrides.get("birth_date") or self._birth_date()
        if "area" in overrides:
            area = overrides["area"]
        elif "resident_id" in overrides:
            area = overrides["resident_id"][:6]
        else:
            area = self._random.choice(AREAS).code
        resident = overrides.get("resident_id") or self._new_resident_id(area, birth, gender)
        self._used_ids.add(resident)
        return Person(
            family=family,
            given=given,
            gender=gender,
            birth_date=birth,
            resident_id=resident,
            phone=overrides.get("phone") or self._phone(),
            address=overrides.get("address") or self._address(area),
            insurance_number=overrides.get("insurance_number") or self._insurance(area),
        )

    def twin(self, person: Person) -> Person:
        """A twin: same family, birth date, address and phone; own given name and ID."""
        gender = self._random.choice(("male", "female"))
        given = self._given(gender)
        while given == person.given:
            given = self._given(gender)
        area = person.resident_id[:6]
        resident = self._new_resident_id(
            area, person.birth_date, gender, avoid=person.resident_id[14:17]
        )
        self._used_ids.add(resident)
        return Person(
            family=person.family,
            given=given,
            gender=gender,
            birth_date=person.birth_date,
            resident_id=resident,
            phone=person.phone,
            address=copy.deepcopy(person.address),
            insurance_number=self._insurance(area),
        )

    def namesake(self, person: Person) -> Person:
        """Someone else with the same name, gender and birth date, from another area."""
        area = self._random.choice([a.code for a in AREAS if a.code != person.area_code])
        return self.person(
            family=person.family,
            given=person.given,
            gender=person.gender,
            birth_date=person.birth_date,
            area=area,
        )

    def typo_of(self, name: str) -> str:
        """The name with one given-name character replaced by a homophone (伟 → 玮).

        Raises ValueError when no given-name character has a known homophone.
        """
        family, given = split_name(name)
        positions = [i for i, character in enumerate(given) if character in self._homophones]
        if not positions:
            raise ValueError(f"no known homophone for any character of {given!r}")
        position = self._random.choice(positions)
        replacement = self._random.choice(self._homophones[given[position]])
        return family + given[:position] + replacement + given[position + 1 :]

    # -- parts -----------------------------------------------------------------------------

    def _surname(self) -> str:
        return self._random.choices(self._surnames, weights=self._surname_weights)[0]

    def _given(self, gender: str) -> str:
        pool = MALE_GIVEN if gender == "male" else FEMALE_GIVEN
        length = 1 if self._random.random() < 0.25 else 2
        return "".join(self._random.choice(pool) for _ in range(length))

    def _birth_date(self) -> datetime.date:
        span = (BIRTH_TO - BIRTH_FROM).days
        return BIRTH_FROM + datetime.timedelta(days=self._random.randint(0, span))

    def _new_resident_id(
        self, area: str, birth: datetime.date, gender: str, *, avoid: str | None = None
    ) -> str:
        first = 1 if gender == "male" else 2
        candidates = [s for s in range(first, 1000, 2) if avoid is None or f"{s:03d}" != avoid]
        for _ in range(len(candidates)):
            number = resident_id_for(area, birth, self._random.choice(candidates), gender)
            if number not in self._used_ids:
                return number
        raise RuntimeError(f"resident IDs exhausted for {area} {birth} {gender}")

    def _phone(self) -> str:
        return self._random.choice(MOBILE_PREFIXES) + f"{self._random.randrange(10**8):08d}"

    def _insurance(self, area: str) -> str:
        """A synthetic medical insurance person number: area code and 14 digits."""
        return area + f"{self._random.randrange(10**14):014d}"

    def _address(self, area_code: str) -> dict[str, Any]:
        area = AREAS_BY_CODE.get(area_code)
        if area is None:
            raise ValueError(f"area {area_code} is not in AREAS; pass an address too")
        road = self._random.choice(ROADS)
        line = (
            f"{road}{self._random.randint(1, 999)}号"
            f"{self._random.randint(1, 30)}栋{self._random.randint(1, 6)}单元"
            f"{self._random.randint(1, 32)}{self._random.randint(1, 4):02d}室"
        )
        city = "" if area.city == area.state else area.city
        return {
            "use": "home",
            "type": "physical",
            "text": f"{area.state}{city}{area.district}{line}",
            "line": [line],
            "city": area.city,
            "district": area.district,
            "state": area.state,
            "country": "CN",
        }


def patient_resource(
    person: Person,
    organization_id: str,
    mrn: str | None = None,
    *,
    with_resident_id: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """A FHIR Patient for a person as a hospital would send it; ``extra`` keys are added last."""
    identifiers: list[dict[str, Any]] = []
    if with_resident_id:
        identifiers.append(
            {
                "use": "official",
                "type": {"coding": [{"system": V2_0203, "code": "NI"}], "text": "居民身份证"},
                "system": RESIDENT_ID_SYSTEM,
                "value": person.resident_id,
            }
        )
    if mrn is not None:
        identifiers.append(
            {
                "use": "usual",
                "type": {"coding": [{"system": V2_0203, "code": "MR"}], "text": "病案号"},
                "system": f"https://yijian-hub.org/fhir/sid/org/{organization_id}/mrn",
                "value": mrn,
            }
        )
    resource: dict[str, Any] = {"resourceType": "Patient"}
    if identifiers:
        resource["identifier"] = identifiers
    resource.update(
        {
            "name": [
                {
                    "use": "official",
                    "text": person.name,
                    "family": person.family,
                    "given": [person.given],
                }
            ],
            "gender": person.gender,
            "birthDate": person.birth_date.isoformat(),
            "telecom": [{"system": "phone", "value": person.phone, "use": "mobile"}],
            "address": [copy.deepcopy(person.address)],
            "managingOrganization": {"reference": f"Organization/{organization_id}"},
        }
    )
    resource.update(extra)
    return resource
