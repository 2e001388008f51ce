"""`make soak`: exactly-once under chaos, through the Python adapter and the Node client.

Two gateway replicas share one DynamoDB Local (through a proxy that delays storage at random),
and a two-worker gateway serves one SQLite file. A driver plays an at-least-once event stream:
each event is delivered 1 to 3 times, some duplicates at once, some later; each delivery goes
to a random gateway of its backend, through the Python adapter (``@idempotent``) or the Node
client (tools/soak_node.mjs). Some invocations "time out" mid-work: they stop without completing
or releasing, and their lease must run out before a retry takes over. At random points of the
stream a gateway is SIGKILLed and restarted, a gateway process is frozen (SIGSTOP) for a few
seconds, and the storage delay changes. A delivery that fails (timed out, in progress, gateway
unavailable) is retried later, as Lambda would.

Every run of the work appends a line to a ledger file (O_APPEND): the side effect. The soak
passes when, for every event:

- no run of its work started before the previous run's lease had expired (later runs are
  takeovers, counted apart; an earlier one is a duplicate execution);
- it was not lost: some delivery succeeded, and its record is completed;
- its record holds the result of its last run (no stale holder overwrote a newer result).

It prints its figures as one JSON line, and exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idemgate._cli import main as idemgate_cli
from idemgate.testing import DelayingProxy, DynamoDBLocal, GatewayServer
from lambda_adapter import (
    GatewayPersistenceLayer,
    IdempotencyAlreadyInProgressError,
    IdempotencyConfig,
    IdempotencyError,
    IdempotencyUnavailableError,
    idempotent,
)
from lambda_adapter._persistence import Invocation
from lambda_adapter.testing import FakeLambdaContext

ROOT = Path(__file__).resolve().parent.parent
NODE_WORKER = ROOT / "tools" / "soak_node.mjs"
NAMESPACE = "soak"
FUNCTION_NAME = "soak"
# An invocation's whole time: the lease it claims, and (less the adapter's reserve) its budget.
INVOCATION_MS = 2500
# A "timing out" invocation has less, so retries take over soon.
TIMING_OUT_MS = 700
WORK_MS = (0, 20)
# Lease ends and run starts are both read off this machine's clock, in whole milliseconds.
CLOCK_TOLERANCE_MS = 2
MAX_ATTEMPTS = 40
RETRY_CAP_S = 4.0
STORAGE_TIMEOUT_MS = 1000
# Mostly fast, sometimes slow, now and then slower than the storage timeout.
STORAGE_DELAYS_S = (0.0, 0.0, 0.0, 0.005, 0.02, 0.1, 0.3, 1.2)
STORAGE_DELAY_LASTS_S = (0.2, 2.0)
GATEWAY_DOWN_S = (0.1, 1.0)
GATEWAY_PAUSED_S = (0.5, 3.0)


# A gateway restarted while storage is slow must serve again without waiting for storage.
LIVE = "/healthz"


class InvocationTimedOut(BaseException):
    """Ends an invocation mid-work as Lambda's timeout would: no complete, no release."""


@dataclass
class Delivery:
    event: int
    backend: str
    attempts: int = 0


@dataclass
class Figures:
    events: int = 0
    deliveries: int = 0
    duplicates_injected: int = 0
    concurrent_duplicates: int = 0
    invocations: int = 0
    by_client: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    timed_out_invocations: int = 0
    gateway_kills: int = 0
    gateway_pauses: int = 0
    storage_delay_changes: int = 0
    given_up_deliveries: int = 0

    def count(self, client: str, outcome: str) -> None:
        self.invocations += 1
        self.by_client[client] += 1
        self.outcomes[outcome] += 1
        self.timed_out_invocations += outcome == "timed_out"


class Ledger:
    """The side effects: one JSON line per run of the work, appended with O_APPEND."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, event: int, run: str, lease_floor_ms: int) -> None:
        line = {
            "event": event,
            "run": run,
            "start_ms": time.time_ns() // 1_000_000,
            "lease_floor_ms": lease_floor_ms,
        }
        os.write(self._fd, (json.dumps(line) + "\n").encode())

    def runs(self) -> dict[int, list[dict[str, Any]]]:
        by_event: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for line in self.path.read_text().splitlines():
            run = json.loads(line)
            by_event[run["event"]].append(run)
        for runs in by_event.values():
            runs.sort(key=lambda run: (run["start_ms"], run["run"]))
        return by_event

    def close(self) -> None:
        os.close(self._fd)


@dataclass
class _Work:
    """What the handler of the current Python invocation needs to know (one per thread)."""

    run: str = ""
    lease_floor_ms: int = 0
    time_out: bool = False
    ran: bool = False


class _RecordingStore(GatewayPersistenceLayer):
    """The adapter's store, noting which invocations' completes failed (it only logs them)."""

    def __init__(self, *, url: str, failed_completes: set[str]) -> None:
        super().__init__(url=url, namespace=NAMESPACE)
        self._failed_completes = failed_completes

    def complete(self, key: str, *, invocation: Invocation, **kwargs: Any) -> None:
        try:
            super().complete(key, invocation=invocation, **kwargs)
        except IdempotencyError:
            self._failed_completes.add(str(invocation.request_id))
            raise


class PythonClient:
    """Invocations of a Python handler decorated with ``@idempotent``, one store per gateway."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._local = threading.local()
        self._handlers: dict[str, Callable[[dict[str, Any], Any], Any]] = {}
        self._failed_completes: set[str] = set()
        # The Node client keys its records by the same name, so both share every event's key.
        self.handler_name = f"{PythonClient._work.__module__}.{PythonClient._work.__qualname__}"

    def _handler(self, url: str) -> Callable[[dict[str, Any], Any], Any]:
        if url not in self._handlers:
            store = _RecordingStore(url=url, failed_completes=self._failed_completes)
            self._handlers[url] = idempotent(persistence_store=store, config=IdempotencyConfig())(
                self._work
            )
        return self._handlers[url]

    def _work(self, event: dict[str, Any], context: object) -> dict[str, Any]:
        work: _Work = self._local.work
        work.ran = True
        self._ledger.append(event["event"], work.run, work.lease_floor_ms)
        time.sleep(random.uniform(*WORK_MS) / 1000)
        if work.time_out:
            raise InvocationTimedOut
        return {"event": event["event"], "run": work.run}

    def invoke(self, url: str, event: int, *, remaining_ms: int, time_out: bool) -> dict[str, Any]:
        run = f"py-{uuid.uuid4().hex[:12]}"
        lease_floor_ms = time.time_ns() // 1_000_000 + remaining_ms
        work = self._local.work = _Work(run, lease_floor_ms, time_out)
        context = FakeLambdaContext(
            remaining_ms=remaining_ms, function_name=FUNCTION_NAME, aws_request_id=run
        )
        try:
            result = self._handler(url)({"event": event}, context)
        except InvocationTimedOut:
            return {"outcome": "timed_out", "ran": True}
        except IdempotencyAlreadyInProgressError:
            return {"outcome": "in_progress", "ran": work.ran}
        except IdempotencyUnavailableError:
            return {"outcome": "unavailable", "ran": work.ran}
        except IdempotencyError as error:
            return {"outcome": "error", "code": type(error).__name__, "ran": work.ran}
        if run in self._failed_completes:
            return {"outcome": "complete_failed", "ran": True}
        return {"outcome": "ok", "ran": work.ran, "result": result}


class NodeClient:
    """Invocations through the Node client, all in one Node process (tools/soak_node.mjs)."""

    def __init__(self, ledger: Ledger, handler_name: str) -> None:
        node = shutil.which("node")
        if node is None:
            raise SystemExit("the soak needs Node.js 20+: install nodejs")
        self._ledger = ledger
        self._handler_name = handler_name
        self._process = subprocess.Popen(
            [node, str(NODE_WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # its warnings about gateways killed on purpose
            text=True,
            bufsize=1,
        )
        self._pending: dict[str, Future[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            report = json.loads(line)
            with self._lock:
                self._pending.pop(report.pop("id")).set_result(report)

    def invoke(self, url: str, event: int, *, remaining_ms: int, time_out: bool) -> dict[str, Any]:
        run = f"node-{uuid.uuid4().hex[:12]}"
        answer: Future[dict[str, Any]] = Future()
        request = {
            "id": run,
            "url": url,
            "namespace": NAMESPACE,
            "handlerName": self._handler_name,
            "event": {"event": event},
            "remainingMs": remaining_ms,
            "kill": time_out,
            "workMs": random.uniform(*WORK_MS),
            "ledger": str(self._ledger.path),
        }
        with self._lock:
            self._pending[run] = answer
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps(request) + "\n")
            self._process.stdin.flush()
        return answer.result(timeout=remaining_ms / 1000 + 30)

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.terminate()
        self._process.wait(10)


@dataclass
class Stack:
    proxy: DelayingProxy
    gateways: dict[str, list[GatewayServer]]


@contextlib.contextmanager
def running_stack(workdir: Path, dynamodb_port: int | None) -> Iterator[Stack]:
    env = {
        "IDEMGATE_STORAGE_TIMEOUT_MS": str(STORAGE_TIMEOUT_MS),
        "IDEMGATE_ACCESS_LOG": "false",
        "IDEMGATE_LOG_LEVEL": "error",
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "soak"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "soak"),
    }
    os.environ.update({name: env[name] for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
    with contextlib.ExitStack() as stack:
        if dynamodb_port is None:
            dynamodb = stack.enter_context(DynamoDBLocal())
        else:
            dynamodb = DynamoDBLocal(port=dynamodb_port)  # already running
        table = f"soak-{uuid.uuid4().hex[:8]}"
        if idemgate_cli(["create-table", "--storage", dynamodb.storage_url(table)]) != 0:
            raise SystemExit("could not create the soak table")
        proxy = stack.enter_context(DelayingProxy(dynamodb.port))
        storage = dynamodb.storage_url(table).replace(dynamodb.endpoint_url, proxy.endpoint_url)
        replicas = [GatewayServer(storage=storage, env=env, ready_path=LIVE) for _ in range(2)]
        sqlite = GatewayServer(
            storage=f"sqlite:///{workdir / 'soak.db'}", workers=2, env=env, ready_path=LIVE
        )
        for gateway in (*replicas, sqlite):
            stack.callback(gateway.stop)
        with ThreadPoolExecutor(3) as starting:  # each start mostly waits for imports
            list(starting.map(GatewayServer.start, (*replicas, sqlite)))
        yield Stack(proxy, {"dynamodb": replicas, "sqlite": [sqlite]})


class Chaos:
    """Gateway kills and storage delay changes, run in a thread of their own as asked."""

    def __init__(self, stack: Stack, figures: Figures, rng: random.Random) -> None:
        self._stack, self._figures, self._rng = stack, figures, rng
        self._pool = ThreadPoolExecutor(1)
        self._done: list[Future[None]] = []

    def act(self, action: str) -> None:
        """``kill`` or ``pause`` a gateway, ``delay`` storage at random, or ``calm`` it."""
        if action == "kill":
            self._done.append(self._pool.submit(self._kill_and_restart))
        elif action == "pause":
            self._done.append(self._pool.submit(self._pause_and_resume))
        elif action == "delay":
            self._stack.proxy.delay_s = self._rng.choice(STORAGE_DELAYS_S)
            self._figures.storage_delay_changes += 1
        else:
            self._stack.proxy.delay_s = 0.0

    def _kill_and_restart(self) -> None:
        gateway = self._rng.choice([g for gs in self._stack.gateways.values() for g in gs])
        gateway.kill()
        self._figures.gateway_kills += 1
        time.sleep(self._rng.uniform(*GATEWAY_DOWN_S))
        gateway.start()

    def _pause_and_resume(self) -> None:
        # Requests already sent to a frozen process wait in its socket and are handled when it
        # resumes, after their callers gave up and, maybe, after their leases ended: only the
        # fencing token stops a stale complete then. A frozen SQLite worker may also hold the
        # writers' lock: its sibling must answer 503 within the storage timeout meanwhile.
        gateway = self._rng.choice([g for gs in self._stack.gateways.values() for g in gs])
        worker = self._rng.choice(gateway.worker_pids())
        os.kill(worker, signal.SIGSTOP)
        self._figures.gateway_pauses += 1
        try:
            time.sleep(self._rng.uniform(*GATEWAY_PAUSED_S))
        finally:
            os.kill(worker, signal.SIGCONT)

    def settle(self) -> None:
        """Wait for every restart, and make storage fast for the final checks."""
        for done in self._done:
            done.result()
        self._pool.shutdown()
        self._stack.proxy.delay_s = 0.0


def _retry_delay_s(outcome: str, attempts: int, rng: random.Random) -> float:
    if outcome == "timed_out":  # Lambda retries a timed-out async invocation later
        return TIMING_OUT_MS / 1000 + rng.uniform(0, 0.5)
    if outcome == "complete_failed":  # the record stays in progress until its lease ends
        return INVOCATION_MS / 1000 + rng.uniform(0, 0.5)
    # In progress, or the gateway is down: back off, as a queue's redelivery would.
    return rng.uniform(0.1, min(RETRY_CAP_S, 0.2 * 2**attempts))


Timeline = list[tuple[float, int, "Delivery | str"]]


def plan(
    args: argparse.Namespace, rng: random.Random, backends: list[str], figures: Figures
) -> tuple[Timeline, Iterator[int]]:
    """Every event's deliveries and the chaos on one timeline of (due, sequence, item)."""
    timeline: Timeline = []
    sequence = itertools.count()
    start = time.monotonic()
    figures.events = args.events
    for event in range(args.events):
        due = start + event / args.rate
        backend = backends[event % len(backends)]
        copies = rng.choice((1, 1, 2, 2, 3))
        figures.deliveries += copies
        figures.duplicates_injected += copies - 1
        for copy in range(copies):
            concurrent = copy > 0 and rng.random() < 0.4
            figures.concurrent_duplicates += concurrent
            later = 0.0 if copy == 0 or concurrent else rng.uniform(0.05, 3.0)
            delivery = Delivery(event, backend)
            heapq.heappush(timeline, (due + later, next(sequence), delivery))
    stream_s = args.events / args.rate
    for action, count in (("kill", args.kills), ("pause", args.pauses)):
        for _ in range(count):
            point = rng.uniform(0.05, 0.95) * stream_s
            heapq.heappush(timeline, (start + point, next(sequence), action))
    for point in sorted(rng.uniform(0.0, 1.0) * stream_s for _ in range(args.delays)):
        heapq.heappush(timeline, (start + point, next(sequence), "delay"))
        calm = point + rng.uniform(*STORAGE_DELAY_LASTS_S)
        heapq.heappush(timeline, (start + calm, next(sequence), "calm"))
    return timeline, sequence


def drive(args: argparse.Namespace, stack: Stack, ledger: Ledger, figures: Figures) -> None:
    """Play the timeline: deliveries on a pool of threads, retried until they succeed."""
    rng = random.Random(args.seed)
    python = PythonClient(ledger)
    node = NodeClient(ledger, python.handler_name)
    chaos = Chaos(stack, figures, rng)
    timeline, sequence = plan(args, rng, list(stack.gateways), figures)

    succeeded: set[int] = set()
    lock = threading.Lock()
    in_flight = threading.Semaphore(args.concurrency)

    def deliver(delivery: Delivery) -> None:
        try:
            time_out = rng.random() < args.timeout_share
            client = python if rng.random() < 0.5 else node
            gateway = rng.choice(stack.gateways[delivery.backend])
            remaining_ms = TIMING_OUT_MS if time_out else INVOCATION_MS
            report = client.invoke(
                gateway.url, delivery.event, remaining_ms=remaining_ms, time_out=time_out
            )
            with lock:
                figures.count(type(client).__name__, report["outcome"])
                if report["outcome"] == "ok":
                    succeeded.add(delivery.event)
                    return
                delivery.attempts += 1
                if delivery.attempts >= MAX_ATTEMPTS:
                    figures.given_up_deliveries += 1
                    return
                pause = _retry_delay_s(report["outcome"], delivery.attempts, rng)
                heapq.heappush(timeline, (time.monotonic() + pause, next(sequence), delivery))
        finally:
            in_flight.release()

    outstanding: list[Future[None]] = []
    with ThreadPoolExecutor(args.concurrency) as pool:
        while True:
            with lock:
                if not timeline and all(future.done() for future in outstanding):
                    break
                head = timeline[0] if timeline else None
            if head is None or head[0] > time.monotonic():
                time.sleep(0.005)
                continue
            with lock:
                _, _, item = heapq.heappop(timeline)
            if isinstance(item, str):
                chaos.act(item)
            else:
                in_flight.acquire()
                outstanding.append(pool.submit(deliver, item))
            outstanding = [future for future in outstanding if not future.done()]
    chaos.settle()
    node.close()
    figures.outcomes["never_succeeded"] = args.events - len(succeeded)


def check(stack: Stack, ledger: Ledger, figures: Figures, events: int) -> dict[str, Any]:
    """The pass conditions, from the ledger and a replay of every event."""
    runs = ledger.runs()
    takeovers = duplicate_executions = lost = stale_results = 0
    examples: list[str] = []
    for event_runs in runs.values():
        for previous, later in itertools.pairwise(event_runs):
            if later["start_ms"] + CLOCK_TOLERANCE_MS < previous["lease_floor_ms"]:
                duplicate_executions += 1
                examples.append(f"duplicate: {previous} then {later}")
            else:
                takeovers += 1

    # A replay through the adapter: it must answer from the record, never run the work.
    python = PythonClient(ledger)
    backends = list(stack.gateways)
    for event in range(events):
        gateway = stack.gateways[backends[event % len(backends)]][0]
        report = python.invoke(gateway.url, event, remaining_ms=INVOCATION_MS, time_out=False)
        event_runs = runs.get(event, [])
        if report["outcome"] != "ok" or report["ran"] or not event_runs:
            lost += 1
            examples.append(f"lost: event {event}: {report}")
        elif report["result"] != {"event": event, "run": event_runs[-1]["run"]}:
            stale_results += 1
            examples.append(f"stale: event {event}: {report['result']} after {event_runs[-1]}")
    return {
        "events": figures.events,
        "deliveries": figures.deliveries,
        "duplicates_injected": figures.duplicates_injected,
        "concurrent_duplicates": figures.concurrent_duplicates,
        "invocations": figures.invocations,
        "invocations_by_client": dict(figures.by_client),
        "outcomes": dict(figures.outcomes),
        "timed_out_invocations": figures.timed_out_invocations,
        "completes_failed_after_work": figures.outcomes["complete_failed"],
        "gateway_kills": figures.gateway_kills,
        "gateway_pauses": figures.gateway_pauses,
        "storage_delay_changes": figures.storage_delay_changes,
        "given_up_deliveries": figures.given_up_deliveries,
        "runs": sum(len(event_runs) for event_runs in runs.values()),
        "takeovers": takeovers,
        "duplicate_executions": duplicate_executions,
        "lost_events": lost,
        "stale_results": stale_results,
        "examples": examples[:10],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=100.0, help="new events per second")
    parser.add_argument("--concurrency", type=int, default=16, help="invocations at once")
    parser.add_argument("--kills", type=int, default=20, help="gateway SIGKILLs in the stream")
    parser.add_argument("--pauses", type=int, default=10, help="gateway worker SIGSTOPs")
    parser.add_argument("--delays", type=int, default=40, help="storage delay changes")
    parser.add_argument("--timeout-share", type=float, default=0.05, help="invocations cut short")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--dynamodb-port", type=int, default=None, help="a DynamoDB Local already on 127.0.0.1"
    )
    args = parser.parse_args(argv)
    args.seed = args.seed if args.seed is not None else random.randrange(2**32)

    # The adapter logs every gateway it finds down; here they are killed on purpose.
    logging.getLogger("lambda_adapter").setLevel(logging.CRITICAL)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="idemgate-soak-") as workdir:
        ledger = Ledger(Path(workdir) / "ledger.jsonl")
        figures = Figures()
        with running_stack(Path(workdir), args.dynamodb_port) as stack:
            stack_started = time.monotonic()
            drive(args, stack, ledger, figures)
            driven = time.monotonic()
            report = check(stack, ledger, figures, args.events)
            report["phases_s"] = {
                "start": round(stack_started - started, 1),
                "stream": round(driven - stack_started, 1),
                "check": round(time.monotonic() - driven, 1),
            }
        ledger.close()
    report["seed"] = args.seed
    report["seconds"] = round(time.monotonic() - started, 1)
    failures = ("duplicate_executions", "lost_events", "stale_results")
    passed = not any(report[failure] for failure in failures)
    report["passed"] = passed
    print(json.dumps(report), flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
