"""The recognition catalogue: which tests may be reused, for how long, from whom.

The catalogue is data (``fhir_profiles/recognition/catalogue.json`` ships the defaults; the
database holds every edited version). Each item names the codes it answers to (LOINC for lab
items and panels, procedure codes or modality + body site for imaging), its validity window
(per region), the scope of institutions whose results it accepts, the quality control the
performing institution must hold, its price, and when reuse is not suggested.

This module is pure: models, validation and the code → item resolution the rules engine uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
DICOM_MODALITY = "http://dicom.nema.org/resources/ontology/DCM"
ITEM_SYSTEM = "https://yijian-hub.org/fhir/CodeSystem/recognition-item"

Category = Literal["lab", "imaging"]
Scope = Literal["institution", "community", "city", "province", "national"]
# Conditions under which a result is not suggested for reuse (the doctor should re-test).
Condition = Literal["abnormal", "critical"]

SCOPE_ORDER: tuple[Scope, ...] = ("institution", "community", "city", "province", "national")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Code(_Model):
    """A code an item answers to (a Coding without display)."""

    system: str
    code: str
    display: str | None = None

    @property
    def token(self) -> str:
        return f"{self.system}|{self.code}"


class Names(_Model):
    zh: str = Field(min_length=1)
    en: str = Field(min_length=1)


class ImagingTarget(_Model):
    """Imaging by modality (DICOM code, ``CT``) and body site (SNOMED CT codes; any of)."""

    modality: str = Field(min_length=1)
    body_sites: tuple[Code, ...] = ()


class QualityControl(_Model):
    """The quality-control pass the performing institution must hold.

    ``discipline`` is matched against the ``discipline`` of the Organization's QC passes (an
    item id there matches too); the pass must cover the time the result was produced.
    """

    required: bool = True
    discipline: str | None = None


class Region(_Model):
    """A region of the GB/T 2260 administrative division codes (``33`` Zhejiang,
    ``3301`` Hangzhou, ``330106`` Xihu district): its name and recognition-label prefix."""

    name: str
    label_prefix: str = ""


class CatalogueItem(_Model):
    """One recognisable item (a test, a panel or an imaging examination)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    category: Category
    name: Names
    codes: tuple[Code, ...] = ()
    components: tuple[Code, ...] = ()
    # A result of a panel counts only if its report has the panel code or all of these.
    core_components: tuple[Code, ...] = ()
    imaging: tuple[ImagingTarget, ...] = ()
    validity_days: int = Field(gt=0, le=3650)
    # Region code prefix → days; the longest prefix of the ordering institution's region wins.
    region_validity_days: dict[str, int] = Field(default_factory=dict)
    scope: Scope = "city"
    quality_control: QualityControl = QualityControl()
    price_cny: float = Field(ge=0)
    not_suggested_when: tuple[Condition, ...] = ("critical",)
    # Imaging: only a study with a final report is reusable.
    requires_report: bool = True
    notes: str | None = None

    @field_validator("region_validity_days")
    @classmethod
    def _regions(cls, value: dict[str, int]) -> dict[str, int]:
        for region, days in value.items():
            if not region.isdigit() or len(region) not in (2, 4, 6):
                raise ValueError(f"region {region!r} must be a 2-, 4- or 6-digit division code")
            if not 0 < days <= 3650:
                raise ValueError(f"region {region}: validity must be 1–3650 days")
        return value

    @model_validator(mode="after")
    def _answers_to_something(self) -> CatalogueItem:
        if not self.codes and not self.components and not self.imaging:
            raise ValueError(f"item {self.id}: give codes, components or imaging targets")
        if self.category == "imaging" and not (self.codes or self.imaging):
            raise ValueError(f"item {self.id}: an imaging item needs codes or imaging targets")
        missing = {c.token for c in self.core_components} - {c.token for c in self.components}
        if missing:
            raise ValueError(f"item {self.id}: core components {sorted(missing)} not components")
        return self

    def validity_for(self, region: str | None) -> int:
        """The validity window in days for an institution in ``region``."""
        if region:
            for length in (6, 4, 2):
                days = self.region_validity_days.get(region[:length])
                if days is not None:
                    return days
        return self.validity_days

    @property
    def is_panel(self) -> bool:
        return bool(self.components)


class CatalogueDocument(_Model):
    """The whole catalogue, as stored and exchanged (JSON)."""

    version: str = Field(min_length=1)
    status: Literal["default", "active"] = "active"
    description: str | None = None
    label: str = "HR"
    label_prefix: str = ""
    regions: dict[str, Region] = Field(default_factory=dict)
    items: tuple[CatalogueItem, ...]

    @model_validator(mode="after")
    def _unique(self) -> CatalogueDocument:
        seen: set[str] = set()
        for item in self.items:
            if item.id in seen:
                raise ValueError(f"item id {item.id!r} appears twice")
            seen.add(item.id)
        return self


@dataclass(frozen=True)
class Requested:
    """A requested code resolved against the catalogue.

    ``component`` is set when the code is one analyte of a panel item (a panel covers its
    components: the analyte's own result answers, with the panel's rules).
    """

    item: CatalogueItem
    component: Code | None = None


class Catalogue:
    """A catalogue version, indexed for the rules engine."""

    def __init__(self, document: CatalogueDocument, version: int = 0):
        self.document = document
        self.version = version
        self.items = {item.id: item for item in document.items}
        self._by_code: dict[str, CatalogueItem] = {}
        self._by_component: dict[str, CatalogueItem] = {}
        self._by_modality: dict[str, list[CatalogueItem]] = {}
        for item in document.items:
            for code in item.codes:
                self._by_code.setdefault(code.token, item)
            for code in item.components:
                self._by_component.setdefault(code.token, item)
            for target in item.imaging:
                self._by_modality.setdefault(target.modality, []).append(item)

    def resolve(self, system: str | None, code: str) -> Requested | None:
        """The item a requested code stands for: a catalogue id, an item code, or a panel
        component (LOINC); None when it is not recognisable."""
        if system in (None, "", ITEM_SYSTEM) and code in self.items:
            return Requested(self.items[code])
        token = f"{system}|{code}"
        if (item := self._by_code.get(token)) is not None:
            return Requested(item)
        if (item := self._by_component.get(token)) is not None:
            component = next(c for c in item.components if c.token == token)
            return Requested(item, component)
        return None

    def label(self, region: str | None) -> str:
        """The recognition label for a result performed in ``region`` (``浙HR``)."""
        prefix = self.document.label_prefix
        if region:
            for length in (6, 4, 2):
                found = self.document.regions.get(region[:length])
                if found is not None and found.label_prefix:
                    prefix = found.label_prefix
                    break
        return f"{prefix}{self.document.label}"

    def result_codes(self, requested: Iterable[Requested]) -> list[str]:
        """The ``system|code`` tokens of results that may answer these requests."""
        tokens: set[str] = set()
        for entry in requested:
            if entry.component is not None:
                tokens.add(entry.component.token)
                continue
            item = entry.item
            tokens.update(c.token for c in item.codes)
            tokens.update(c.token for c in item.components)
            tokens.update(f"{DICOM_MODALITY}|{t.modality}" for t in item.imaging)
        return sorted(tokens)
