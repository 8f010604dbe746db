"""A loop the query service runs beside its requests: started in a ``cleanup_ctx``, stopped with the app."""

from __future__ import annotations

import asyncio


class Background:
    """Subclasses write :meth:`_run`, which returns once :attr:`_stop` is set (or is cancelled)."""

    name = "background"

    def __init__(self) -> None:
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        raise NotImplementedError
