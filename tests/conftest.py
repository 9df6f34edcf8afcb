"""pytest fixtures: one fresh server (or master + replica) per test.

Environment:
  TAGCACHE_SERVER  server binary (default: redis-server on PATH)
  TAGCACHE_MODULE  module library (default: target/release/libredis_tagcache.so)
"""

import pytest

import harness
from harness import MODULE, SERVER, ServerFactory


def pytest_report_header(config):
    name, ver = harness.server_version()
    return [
        f"tagcache server: {SERVER} ({name} {'.'.join(map(str, ver))})",
        f"tagcache module: {MODULE}",
    ]


def pytest_sessionstart(session):
    if not MODULE.is_file():
        pytest.exit(f"module not built: {MODULE} (run `make build`)", returncode=2)
    if harness.server_version()[0] == "unknown":
        pytest.exit(f"server binary not usable: {SERVER}", returncode=2)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture
def servers(request, tmp_path):
    """Factory: `servers.start(module_args=..., extra_args=...)`; all stopped at teardown."""
    factory = ServerFactory(tmp_path)
    yield factory
    failed = any(
        getattr(request.node, f"rep_{when}", None) is not None
        and getattr(request.node, f"rep_{when}").failed
        for when in ("setup", "call")
    )
    if failed:
        print(factory.log_tails())
    factory.stop_all()


@pytest.fixture
def server(servers):
    return servers.start()


@pytest.fixture
def r(server):
    """A RESP2 client of a fresh server; replies are bytes."""
    return server.client()


@pytest.fixture
def master_replica(servers):
    """(master, replica) servers, the replica linked and in sync."""
    master = servers.start(name="master")
    replica = servers.start_replica(master)
    return master, replica
