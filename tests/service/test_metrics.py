"""Per-namespace counters on /metrics: what each one counts, zeros from the start, the label cap."""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from idemgate import _observability
from idemgate._observability import NamespaceCounters, RequestContextMiddleware
from idemgate.testing import GatewayServer

NAMESPACE_COUNTERS = (
    "idemgate_claims_total",
    "idemgate_replays_total",
    "idemgate_in_progress_total",
    "idemgate_fingerprint_mismatches_total",
    "idemgate_lease_takeovers_total",
    "idemgate_lease_lost_total",
)
CLAIM_ROUTE = "/v1/records/{namespace}/{key}/claim"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def capped_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    path: Path = tmp_path_factory.mktemp("metrics") / "idemgate.db"
    # A minute to settle: what /metrics shows is current all the same (the scrape settles).
    env = {
        "IDEMGATE_METRICS_MAX_NAMESPACES": "2",
        "IDEMGATE_ACCESS_LOG": "false",
        "IDEMGATE_ACCESS_LOG_FLUSH_MS": "60000",
    }
    with GatewayServer(storage=f"sqlite:///{path}", env=env) as server:
        yield server


def samples(gateway: GatewayServer) -> Samples:
    text = httpx.get(f"{gateway.url}/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def counter(
    values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, ns: str
) -> float:
    return values.get((name, frozenset({("namespace", ns)})), -1.0)


def test_every_counter_is_zero_before_anything_happens(tmp_path: Path) -> None:
    with GatewayServer(storage=f"sqlite:///{tmp_path}/fresh.db") as gateway:
        values = samples(gateway)
    for name in NAMESPACE_COUNTERS:
        assert counter(values, name, "other") == 0.0, name
    for status, outcome in (("503", "STORAGE_UNAVAILABLE"), ("409", "IN_PROGRESS")):
        labels = {"route": CLAIM_ROUTE, "method": "POST", "status": status, "outcome": outcome}
        assert values[("idemgate_requests_total", frozenset(labels.items()))] == 0.0
    for backend in ("sqlite", "dynamodb"):
        assert values[("idemgate_storage_errors_total", frozenset({("backend", backend)}))] == 0


def claim(client: httpx.Client, ns: str, key: str, **body: object) -> httpx.Response:
    return client.post(f"/v1/records/{ns}/{key}/claim", json=body)


def test_each_answer_counts_against_its_namespace(capped_gateway: GatewayServer) -> None:
    ns = "metrics-a"
    with httpx.Client(base_url=capped_gateway.url, timeout=10) as client:
        token = claim(client, ns, "done", fingerprint="f1").json()["lease_token"]
        client.post(f"/v1/records/{ns}/done/complete", json={"lease_token": token, "result": 1})
        assert claim(client, ns, "done", fingerprint="f1").status_code == 200  # replay
        assert claim(client, ns, "done", fingerprint="f1").status_code == 200  # replay
        assert claim(client, ns, "done", fingerprint="f2").status_code == 422  # mismatch
        stale = claim(client, ns, "slow", lease_ms=1).json()["lease_token"]
        deadline = time.monotonic() + 10
        while (answer := claim(client, ns, "slow", lease_ms=60_000)).status_code != 201:
            assert answer.status_code == 409
            assert time.monotonic() < deadline
        assert answer.json()["attempt"] == 2
        in_progress_answers = 2
        for _ in range(in_progress_answers):
            assert claim(client, ns, "slow").status_code == 409
        lost = client.post(
            f"/v1/records/{ns}/slow/complete", json={"lease_token": stale, "result": 2}
        )
        assert lost.status_code == 409
        assert lost.json()["code"] == "LEASE_LOST"
    values = samples(capped_gateway)
    # in-progress answers: the ones while waiting for the lease to end, and the two after.
    waited = counter(values, "idemgate_in_progress_total", ns) - in_progress_answers
    assert waited >= 0
    assert counter(values, "idemgate_replays_total", ns) == 2
    assert counter(values, "idemgate_fingerprint_mismatches_total", ns) == 1
    assert counter(values, "idemgate_lease_takeovers_total", ns) == 1
    assert counter(values, "idemgate_lease_lost_total", ns) == 1
    # claimed twice fresh + the takeover, 2 replays, 1 mismatch, and every in-progress answer
    expected_claims = 3 + 2 + 1 + counter(values, "idemgate_in_progress_total", ns)
    assert counter(values, "idemgate_claims_total", ns) == expected_claims


def test_namespaces_beyond_the_cap_share_the_other_label(capped_gateway: GatewayServer) -> None:
    before = counter(samples(capped_gateway), "idemgate_claims_total", "other")
    with httpx.Client(base_url=capped_gateway.url, timeout=10) as client:
        for ns in ("cap-1", "cap-2", "cap-3", "cap-4"):
            assert claim(client, ns, "k").status_code == 201
    values = samples(capped_gateway)
    labelled = {
        dict(labels)["namespace"] for name, labels in values if name == "idemgate_claims_total"
    }
    assert len(labelled - {"other"}) == 2  # the cap of this gateway, whichever came first
    assert "cap-3" not in labelled
    assert "cap-4" not in labelled
    assert counter(values, "idemgate_claims_total", "other") - before >= 2


def test_both_workers_answers_reach_the_shared_metrics(tmp_path: Path) -> None:
    """Each worker counts its answers into the shared dir when its ledger is settled (by a
    scrape it answers, or by its timer: the access log tests show the timer alone)."""
    ns, claims = "two-workers", 12
    env = {"IDEMGATE_ACCESS_LOG_FLUSH_MS": "200"}
    with GatewayServer(storage=f"sqlite:///{tmp_path}/shared.db", workers=2, env=env) as gw:
        for n in range(claims):  # a connection each, so either worker may answer
            assert (
                httpx.post(f"{gw.url}/v1/records/{ns}/k-{n}/claim", timeout=10).status_code == 201
            )
        deadline = time.monotonic() + 30
        while (counted := counter(samples(gw), "idemgate_claims_total", ns)) < claims:
            assert time.monotonic() < deadline, f"{counted} of {claims} claims counted"
            time.sleep(0.05)
        assert counted == claims


def test_a_batch_of_durations_is_exposed_as_one_observe_each_would_expose_it() -> None:
    """The ledger counts a batch's durations into the latency histogram at once, through
    prometheus_client's internals: the exposition must be the one ``observe`` gives."""
    bounds = _observability._LATENCY_BOUNDS_S
    durations = [0.0, *bounds, *(b * 0.999 for b in bounds), *(b * 1.001 for b in bounds), 99.0]
    durations += [random.Random(7).uniform(0, 6) for _ in range(200)]
    by_observe, in_bulk = CollectorRegistry(), CollectorRegistry()
    for registry in (by_observe, in_bulk):
        Histogram("latency_seconds", "d", ["route"], buckets=bounds, registry=registry)
    observed = by_observe._names_to_collectors["latency_seconds"].labels("/r")  # type: ignore[attr-defined]
    for duration in durations:
        observed.observe(duration)
    counts = [0] * (len(bounds) + 1)
    for duration in durations:
        counts[_observability._latency_bucket(duration)] += 1
    bulk = in_bulk._names_to_collectors["latency_seconds"].labels("/r")  # type: ignore[attr-defined]
    _observability._observe_many(bulk, counts, sum(durations))
    assert _without_created(in_bulk) == _without_created(by_observe)


def _without_created(registry: CollectorRegistry) -> list[str]:
    """The exposition's lines but the ``_created`` timestamp, which differs by construction."""
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if "_created" not in line]


def test_log_lines_from_another_thread_never_settle_alongside_the_loop() -> None:
    """A log line from an executor thread asks the loop to settle; the loop settles alone, so
    every answer is counted exactly once and nothing raises in either thread."""
    counters = NamespaceCounters(max_namespaces=1)
    front = RequestContextMiddleware(
        app=lambda scope, receive, send: None,  # type: ignore[arg-type,return-value]
        log_requests=False,
        max_body_bytes=0,
        namespaces=counters,
        internal_error=lambda: None,  # type: ignore[arg-type,return-value]
        body_too_large=lambda: None,  # type: ignore[arg-type,return-value]
        settle_interval_ms=60_000,
    )
    scope = {
        "method": "POST",
        "path": "/v1/records/threads/k/claim",
        "route": SimpleNamespace(path_format=CLAIM_ROUTE),
        "path_params": {"namespace": "threads"},
        "state": {"request_id": "r", "outcome": "claimed"},
    }
    answers, errors = 20_000, []
    stop = threading.Event()

    def settle_from_a_thread() -> None:
        while not stop.is_set():
            try:
                _observability._LEDGER.settle()
            except Exception as error:  # the failure this test guards against
                errors.append(error)
                return

    async def answer_all() -> None:
        worker = threading.Thread(target=settle_from_a_thread)
        worker.start()
        try:
            for n in range(answers):
                front._account(scope, 201, 0.001)
                if n % 3 == 0:
                    _observability._LEDGER.settle()
                if n % 100 == 0:
                    await asyncio.sleep(0)  # the thread's requests get their turn
        finally:
            stop.set()
            worker.join()
        _observability._LEDGER.settle()

    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        asyncio.run(answer_all())
    finally:
        sys.setswitchinterval(saved)
    assert errors == []
    (totals,) = [t for t in counters.totals() if t.namespace == "threads"]
    assert totals.total("claims", hours=1) == answers
