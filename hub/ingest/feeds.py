"""Feeds: one per hospital system that pushes results, configured as data.

A feed says which Organization it speaks for, how its messages arrive (MLLP, a file-drop
folder, HTTP), how they are encoded, which identifier systems stand behind its PID-3 assigning
authorities, and which code map turns its local test codes into LOINC. Feeds come from YAML
files in ``YIJIAN_ADAPTERS_DIR`` (one file per feed) or from ``yijian feeds add`` (stored in
the database); a file wins over a database row with the same id.
"""

from __future__ import annotations

import codecs
import ipaddress
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

FEED_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9\-.]{0,63}$"
HUB_CODE_SYSTEM_TEMPLATE = "https://yijian-hub.org/fhir/CodeSystem/org/{organization}/codes"


class FeedInputs(BaseModel):
    """How a feed's messages may arrive."""

    model_config = ConfigDict(extra="forbid")

    mllp: bool = True
    http: bool = True
    file_drop: Path | None = Field(
        default=None, description="folder watched for *.hl7 / *.json files of this feed"
    )
    allowed_peers: list[str] = Field(
        default_factory=list,
        description="MLLP source addresses or networks (CIDR) allowed; empty: any",
    )

    @field_validator("allowed_peers")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad entry
        return value

    def peer_allowed(self, address: str | None) -> bool:
        if not self.allowed_peers or address is None:
            return not self.allowed_peers
        ip = ipaddress.ip_address(address)
        return any(ip in ipaddress.ip_network(n, strict=False) for n in self.allowed_peers)


class FeedConfig(BaseModel):
    """One hospital feed. See README "Feeds and adapters" for the file format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feed: str = Field(pattern=FEED_ID_PATTERN, description="the feed's id, e.g. h1-lis")
    organization: str = Field(description="the hospital's Organization id in the hub")
    name: str = ""
    adapter: str = Field(default="hl7v2", description="translator (entry point) name")
    sending_facility: str = Field(description="MSH-4.1 of its messages: how a message finds it")
    sending_application: str | None = Field(
        default=None, description="MSH-3.1, when one facility has several feeds"
    )
    encoding: Literal["utf-8", "gbk", "gb18030"] = "utf-8"
    timezone: str = Field(default="Asia/Shanghai", description="for timestamps without a zone")
    inputs: FeedInputs = Field(default_factory=FeedInputs)
    identifiers: dict[str, str] = Field(
        default_factory=dict,
        description="PID-3 assigning authority (CX-4.1) → identifier system: a URI, a "
        "NamingSystem id (resident-id) or a hospital number kind (mrn, outpatient, inpatient)",
    )
    code_map: str | None = Field(
        default=None, description="ConceptMap file (fhir_profiles/conceptmaps/NAME or a path)"
    )
    code_system: str | None = Field(
        default=None, description="URI of the feed's local test codes; default per hospital"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="adapter-specific")

    @field_validator("encoding", mode="before")
    @classmethod
    def _encoding(cls, value: Any) -> Any:
        if isinstance(value, str):
            name = codecs.lookup(value).name  # LookupError for an unknown encoding
            return {"utf-8": "utf-8", "gbk": "gbk", "gb18030": "gb18030"}.get(name, value)
        return value

    @property
    def local_code_system(self) -> str:
        return self.code_system or HUB_CODE_SYSTEM_TEMPLATE.format(organization=self.organization)


class FeedConfigError(ValueError):
    """A feed file that cannot be used; the message names the file and the field."""


def load_feed_file(path: Path) -> FeedConfig:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise FeedConfigError(f"{path}: {error}") from error
    if not isinstance(data, dict):
        raise FeedConfigError(f"{path}: a feed file is a YAML mapping")
    try:
        return FeedConfig.model_validate(data)
    except (ValidationError, LookupError, ValueError) as error:
        raise FeedConfigError(f"{path}: {error}") from error


def load_feed_directory(directory: Path | None) -> list[FeedConfig]:
    """Every ``*.yaml``/``*.yml`` feed file of a directory, in name order."""
    if directory is None or not directory.is_dir():
        return []
    paths = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    feeds = [load_feed_file(path) for path in paths]
    seen: set[str] = set()
    for path, feed in zip(paths, feeds, strict=True):
        if feed.feed in seen:
            raise FeedConfigError(f"{path}: feed {feed.feed!r} is defined twice")
        seen.add(feed.feed)
    return feeds
