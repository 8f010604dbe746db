"""The harness that tests/ and bench/ share: real servers and processes on 127.0.0.1, nothing mocked.

* :mod:`testkit.net`: ``free_port`` (the one way to pick a port) and ``basic`` (the write-key header);
* :mod:`testkit.chhttp`: ClickHouse's HTTP interface in front of chDB, a server that can be stopped,
  killed, paused or slowed (also runs alone: ``python -m testkit.chhttp --data DIR --port PORT``);
* :mod:`testkit.service`: the real ``journeys`` CLI and ``journeys up`` in a child process;
* :mod:`testkit.tcpproxy`: a TCP proxy that drops chosen responses after the server sent them.

It lives outside tests/ so that a benchmark need not import the test suite, and outside the installed
packages (pyproject.toml's ``packages.find`` includes only journeys, collector, query and cli): it ships
with the repository, not the wheel. ``python -m pytest`` from the repository root finds it there (the
working directory comes first on ``sys.path``); the benchmarks put the root on ``sys.path`` themselves.
"""
