"""Hot swap: watch ``ROOT/CURRENT`` and serve each newly published version.

A new version is loaded in the background (requests keep using the old one), checked
against the model contract, prepared (its open-set statistics loaded or computed), and
installed atomically with the live changes it does not contain. A refused or broken version
(another model contract; a file whose sha256 or size differs from the manifest, checked by
:meth:`server.base_index.BaseIndex.load` before anything is served) is logged and counted, the old
one keeps serving, and it is not retried until ``CURRENT`` changes again.

The watcher also notices kept versions disappearing (``facesearch-index prune``, or a publish
with ``--keep-versions``) while ``CURRENT`` stays: it then calls ``retain``, which lets the gallery
prune its live journal as far as the remaining versions allow
(``facesearch.store.journal_retention``): the last step of an erasure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from facesearch.errors import ContractMismatchError, FaceSearchError, IndexFormatError
from facesearch.store.index_artifact import current_version, list_versions
from server.base_index import BaseIndex

log = logging.getLogger(f"facesearch.{__name__}")


class IndexWatcher:
    def __init__(
        self,
        root: Path,
        contract_id: str,
        poll_s: float,
        executor: ThreadPoolExecutor,
        *,
        install: Callable[[BaseIndex | None], Awaitable[None]],
        refuse: Callable[[str | None, FaceSearchError], Awaitable[None]],
        prepare: Callable[[BaseIndex], None] | None = None,
        retain: Callable[[], None] | None = None,
    ) -> None:
        self.root = root
        self.contract_id = contract_id
        self.poll_s = poll_s
        self.executor = executor
        self._install = install
        self._refuse = refuse
        self._prepare = prepare
        self._retain = retain
        self.seen: str | None = None  # the CURRENT value last acted upon
        self._versions: tuple[str, ...] = ()  # the kept versions last seen
        self._task: asyncio.Task[None] | None = None

    def current(self) -> str | None:
        try:
            return current_version(self.root)
        except OSError:
            return None

    async def load_current(self) -> None:
        """Load whatever CURRENT names now (or no version) and install it; refusals are reported."""
        loop = asyncio.get_running_loop()
        version = await loop.run_in_executor(self.executor, self.current)
        if version is None:
            await self._install(None)
            self.seen = version
            return
        try:
            base = await loop.run_in_executor(self.executor, self._load)
        except FaceSearchError as err:
            level = logging.ERROR if isinstance(err, ContractMismatchError) else logging.WARNING
            log.log(level, "index version %s refused: %s", version, err)
            self.seen = version  # not retried until CURRENT changes
            await self._refuse(version, err)
            return
        except Exception as err:  # a corrupt file can raise anything (faiss, numpy, sqlite)
            log.exception("index version %s failed to load", version)
            self.seen = version
            await self._refuse(version, IndexFormatError(f"index version {version} failed to load: {err}"))
            return
        await self._install(base)  # raises on failure: the next poll tries again
        self.seen = version

    def _load(self) -> BaseIndex:
        base = BaseIndex.load(self.root, contract_id=self.contract_id)
        if self._prepare is not None:
            try:
                self._prepare(base)
            except BaseException:
                base.close()
                raise
        return base

    def start(self) -> None:
        # the kept versions as of start-up: a version deleted before the first poll is then noticed
        with contextlib.suppress(OSError):
            self._versions = tuple(list_versions(self.root))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="index-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                version = await loop.run_in_executor(self.executor, self.current)
                if version is not None and version != self.seen:
                    log.info("index version %s published (serving %s); loading it", version, self.seen)
                    await self.load_current()
                versions = tuple(await loop.run_in_executor(self.executor, list_versions, self.root))
                if versions != self._versions:
                    if self._retain is not None and set(self._versions) - set(versions):
                        await loop.run_in_executor(self.executor, self._retain)
                    self._versions = versions
            except asyncio.CancelledError:
                raise
            except Exception:  # a watcher that dies silently would freeze the index: log and go on
                log.exception("index watcher: checking %s failed", self.root)
