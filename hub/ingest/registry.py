"""Where the pipeline finds feeds, code maps and translators at run time.

Feeds (YAML files + rows of ``ingest_feed``) and code maps (rows of ``code_mapping``) are read
from their sources at most every ``REFRESH_SECONDS``, so a file dropped into
``YIJIAN_ADAPTERS_DIR`` or a mapping edited through the API takes effect on a running hub
without a restart; edits made through this process take effect at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from pathlib import Path

from hub.ingest.codemaps import CodeMap
from hub.ingest.feeds import FeedConfig, FeedConfigError, load_feed_directory
from hub.ingest.ledger import CodeMappings, RegisteredFeeds
from hub.ingest.translation import Translator
from hub.storage.database import Database

log = logging.getLogger(__name__)
REFRESH_SECONDS = 2.0
MISS_REFRESH_SECONDS = 0.25
ENTRY_POINT_GROUP = "yijian.adapters"


def load_translators() -> dict[str, Translator]:
    """Every installed translator by name (entry-point group ``yijian.adapters``)."""
    found: dict[str, Translator] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[entry.name] = entry.load()
        except Exception:  # a broken plug-in must not take the others down
            log.exception("adapter %s could not be loaded", entry.name)
    return found


class FeedRegistry:
    """The feeds this hub accepts, by id and by (sending facility, sending application)."""

    def __init__(
        self,
        database: Database,
        directory: Path | None,
        on_loaded: Callable[[list[FeedConfig]], Awaitable[None]] | None = None,
    ) -> None:
        self._database = database
        self._directory = directory
        self._on_loaded = on_loaded  # told the feeds after each (re)load
        self._feeds: dict[str, FeedConfig] = {}
        self._sources: dict[str, str] = {}
        self._loaded_at = float("-inf")
        self.errors: list[str] = []

    async def refresh(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._loaded_at < REFRESH_SECONDS:
            return
        feeds: dict[str, FeedConfig] = {}
        sources: dict[str, str] = {}
        errors: list[str] = []
        async with self._database.connection() as conn:
            rows = await RegisteredFeeds(conn).all()
        for row in rows:
            try:
                feed = FeedConfig.model_validate(row)
            except ValueError as error:
                errors.append(f"database feed {row.get('feed')!r}: {error}")
                continue
            feeds[feed.feed], sources[feed.feed] = feed, "database"
        try:
            for feed in load_feed_directory(self._directory):
                feeds[feed.feed], sources[feed.feed] = feed, "file"
        except FeedConfigError as error:
            errors.append(str(error))
            # Keep what the files said last time rather than dropping a working feed.
            for feed_id, source in self._sources.items():
                if source == "file":
                    feeds[feed_id], sources[feed_id] = self._feeds[feed_id], source
        for message in set(errors) - set(self.errors):
            log.error("feed configuration: %s", message)
        self._feeds, self._sources, self.errors = feeds, sources, errors
        self._loaded_at = time.monotonic()
        if self._on_loaded is not None:
            try:
                await self._on_loaded(list(feeds.values()))
            except Exception:  # a bad code-map file must not stop the feeds
                log.exception("after loading feeds")

    async def get(self, feed_id: str) -> FeedConfig | None:
        await self.refresh()
        if feed_id not in self._feeds:
            await self._refresh_on_miss()
        return self._feeds.get(feed_id)

    async def find(self, facility: str, application: str = "") -> FeedConfig | None:
        """The feed of a sending facility (MSH-4.1); a feed naming the application is preferred.
        A facility not known yet makes the registry look again (a feed just added elsewhere
        takes effect at once), at most a few times a second."""
        await self.refresh()
        found = self._find(facility, application)
        if found is None and await self._refresh_on_miss():
            found = self._find(facility, application)
        return found

    async def _refresh_on_miss(self) -> bool:
        if time.monotonic() - self._loaded_at < MISS_REFRESH_SECONDS:
            return False
        await self.refresh(force=True)
        return True

    def _find(self, facility: str, application: str) -> FeedConfig | None:
        general = None
        for feed in self._feeds.values():
            if feed.sending_facility.casefold() != facility.strip().casefold():
                continue
            if feed.sending_application is None:
                general = general or feed
            elif feed.sending_application.casefold() == application.strip().casefold():
                return feed
        return general

    async def all(self) -> list[tuple[FeedConfig, str]]:
        await self.refresh()
        return [(self._feeds[k], self._sources[k]) for k in sorted(self._feeds)]

    async def register(self, feed: FeedConfig) -> None:
        async with self._database.connection() as conn:
            await RegisteredFeeds(conn).save(feed.feed, feed.model_dump(mode="json"))
        await self.refresh(force=True)


class CodeMapCache:
    """Code maps by local code system, re-read at most every ``REFRESH_SECONDS``."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._maps: dict[str, tuple[float, CodeMap]] = {}

    async def get(self, source_system: str) -> CodeMap:
        cached = self._maps.get(source_system)
        if cached and time.monotonic() - cached[0] < REFRESH_SECONDS:
            return cached[1]
        async with self._database.connection() as conn:
            code_map = await CodeMappings(conn).load(source_system)
        self._maps[source_system] = (time.monotonic(), code_map)
        return code_map

    def invalidate(self, source_system: str) -> None:
        self._maps.pop(source_system, None)
