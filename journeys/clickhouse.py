"""ClickHouse access for both services, through clickhouse-connect only.

``chdb:///path`` runs the real ClickHouse engine in this process. Its client is synchronous, so every call
runs on a worker thread, never on the event loop. Each worker thread owns its own chDB client (a client
serialises calls on its handle), and inserts get a thread of their own so a large insert never queues
behind, or in front of, a dashboard read. ``http(s)://`` uses clickhouse-connect's async client. The SQL is
the same on both.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import clickhouse_connect

from journeys.errors import JourneysError


class ClickHouseError(JourneysError):
    """A ClickHouse call failed (unreachable, timed out, or the server refused it)."""


def table_on_cluster(table: str, cluster: str = "") -> str:
    """What a statement that changes ``table``'s stored rows at run time (``ALTER TABLE … DROP PARTITION``,
    ``DELETE FROM``) names: ``table`` on one node; on ``cluster``, ``table_local ON CLUSTER "cluster"``.
    Queries address ``table``, which on a cluster is the Distributed table over the ``_local`` ones; it holds
    no rows, so changes go to the local table on every node (the schema's ``{{table}}`` and ``{{on_cluster}}``
    macros, journeys/migrate.py, say the same for the DDL)."""
    if not cluster:
        return table
    return f"{table}_local ON CLUSTER {quote_identifier(cluster)}"


def quote_identifier(name: str) -> str:
    """``name`` as a ClickHouse identifier in double quotes (a cluster's name in ``ON CLUSTER``)."""
    return '"' + name.replace('"', '""') + '"'


class ClickHouse:
    """Async facade: ``query``, ``command``, ``insert``, ``ping``. Create with :meth:`connect`."""

    def __init__(self, url: str, *, read_threads: int = 4, settings: dict[str, Any] | None = None):
        self.url = url
        self.embedded = url.startswith("chdb:")
        # Deletes (forgetting a customer, retiring old KPI state) are asynchronous mutations: on a large table
        # a synchronous lightweight DELETE took 17 s per table (1.7 M rows, chDB). Reads apply pending
        # mutations on the fly instead, so deleted rows vanish from every read at once all the same.
        self._settings = {"apply_mutations_on_fly": 1, **(settings or {})}
        self._async_client: Any = None
        self._local = threading.local()
        self._readers: ThreadPoolExecutor | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._read_threads = read_threads
        self._sync_clients: list[Any] = []
        self._clients_lock = threading.Lock()

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> "ClickHouse":
        store = cls(url, **kwargs)
        await store._open()
        return store

    async def _open(self) -> None:
        if self.embedded:
            self._readers = ThreadPoolExecutor(self._read_threads, thread_name_prefix="chdb-read")
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="chdb-write")
            path = self.url.removeprefix("chdb://")
            if path not in _ENGINES_OPEN_HERE and _engine_locked_elsewhere(path):
                raise ClickHouseError(
                    f"the embedded ClickHouse in {path} is in use by another process "
                    "(is `journeys up` running? it applies migrations itself)"
                )
            # Open the engine now so an unreadable data dir fails at start, not on the first event.
            try:
                await self._run(self._readers, lambda c: c.command("SELECT 1"))
            except ClickHouseError:
                await self.close()
                raise
            _ENGINES_OPEN_HERE.add(path)
        else:
            try:
                self._async_client = await clickhouse_connect.get_async_client(
                    dsn=self.url, settings=self._settings, connect_timeout=5, send_receive_timeout=60
                )
            except Exception as exc:  # clickhouse-connect raises several unrelated types here
                raise ClickHouseError(f"cannot connect to ClickHouse at {_redact(self.url)}: {exc}") from exc

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = clickhouse_connect.get_client(dsn=self.url, settings=self._settings)
            self._local.client = client
            with self._clients_lock:
                self._sync_clients.append(client)
        return client

    async def _run(self, pool: ThreadPoolExecutor | None, fn: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, lambda: fn(self._client()))
        except Exception as exc:
            raise ClickHouseError(str(exc)) from exc

    async def query(self, sql: str, parameters: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Run a SELECT; values reach the server as bound parameters (``{name:Type}`` placeholders)."""
        if self.embedded:
            result = await self._run(self._readers, lambda c: c.query(sql, parameters=parameters))
        else:
            try:
                result = await self._async_client.query(sql, parameters=parameters)
            except Exception as exc:
                raise ClickHouseError(str(exc)) from exc
        return list(result.column_names), result.result_rows

    async def raw_query(
        self, sql: str, parameters: dict[str, Any] | None = None, fmt: str = "JSONCompactEachRow"
    ) -> bytes:
        """Run a SELECT and return its answer as bytes in ``fmt``: rows that go straight back into an insert
        (:meth:`insert_lines`) without being decoded in Python."""
        if self.embedded:
            return await self._run(self._readers, lambda c: c.raw_query(sql, parameters=parameters, fmt=fmt))
        try:
            return await self._async_client.raw_query(sql, parameters=parameters, fmt=fmt)
        except Exception as exc:
            raise ClickHouseError(str(exc)) from exc

    async def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        if self.embedded:
            return await self._run(self._readers, lambda c: c.command(sql, parameters=parameters))
        try:
            return await self._async_client.command(sql, parameters=parameters)
        except Exception as exc:
            raise ClickHouseError(str(exc)) from exc

    async def execute(self, sql: str, parameters: dict[str, Any] | None = None) -> None:
        """Run a statement without an answer (``INSERT … SELECT``) whose bound parameters may be large. Over
        HTTP :meth:`command` puts them in the URL, which servers cap (ClickHouse: 1 MiB; a refresh's 20 000
        ids and keys are more); a query without an output format sends large ones as form fields instead."""
        if self.embedded:
            await self.command(sql, parameters)
            return
        try:
            await self._async_client.raw_query(sql, parameters=parameters, fmt=None)
        except Exception as exc:
            raise ClickHouseError(str(exc)) from exc

    async def insert_lines(self, table: str, column_names: Sequence[str], data: bytes) -> None:
        """Insert rows given as JSONCompactEachRow lines (``[v1, v2, …]\\n``).

        ClickHouse parses them in C++: far faster than encoding Native blocks in Python, and chDB releases
        the GIL while it works, so the event loop keeps serving requests during a large insert. JSON objects
        in String columns are stored as their JSON text.
        """
        # Events are partitioned by month and may span 2000..now (imports of historical data, a backlog of
        # old device clocks): ClickHouse's default of 100 partitions per insert would make such a batch fail
        # for ever and stall the inserter behind it (measured in chDB: "Too many partitions for single
        # INSERT block"). Validation lets through 2000 onwards; 1000 months lasts until 2083.
        settings = {"input_format_json_read_objects_as_strings": 1, "max_partitions_per_insert_block": 1000}
        kwargs = {"insert_block": data, "settings": settings, "fmt": "JSONCompactEachRow"}
        if self.embedded:
            await self._run(self._writer, lambda c: c.raw_insert(table, list(column_names), **kwargs))
            return
        try:
            await self._async_client.raw_insert(table, list(column_names), **kwargs)
        except Exception as exc:
            raise ClickHouseError(str(exc)) from exc

    async def ping(self, timeout: float = 2.0) -> bool:
        """Reachable and answering within ``timeout`` (a hung server must not hang a readiness probe)."""
        try:
            await asyncio.wait_for(self.command("SELECT 1"), timeout)
            return True
        except (ClickHouseError, asyncio.TimeoutError):
            return False

    async def close(self) -> None:
        if self._async_client is not None:
            await self._async_client.close()
        for pool in (self._readers, self._writer):
            if pool is not None:
                pool.shutdown(wait=True)
        with self._clients_lock:
            for client in self._sync_clients:
                try:
                    client.close()
                except Exception:
                    pass
            self._sync_clients.clear()


# chDB hosts one engine per process (process-global by nature): the paths this process has opened, so
# that a second client here is not mistaken for another process holding the lock.
_ENGINES_OPEN_HERE: set[str] = set()


def _engine_locked_elsewhere(path: str) -> bool:
    """ClickHouse holds an exclusive flock on ``<path>/status`` while an engine runs on ``path``; probing it
    tells "another process owns this data dir" apart from other failures, which chDB reports alike."""
    import fcntl
    import os

    status = os.path.join(path, "status")
    if not os.path.exists(status):
        return False
    fd = os.open(status, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _redact(url: str) -> str:
    """Drop credentials before a URL reaches a log or an error message."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
