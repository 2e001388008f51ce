"""Random sequences of record operations checked against a model of the contract.

A Hypothesis state machine drives claim, complete, release, extend, get and delete on a few keys
through ``RecordService`` on real storage (a SQLite file, a DynamoDB Local table), moves a clock
of its own, and checks every answer against the small model below, written from
docs/http-api.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from idemgate._exceptions import (
    FingerprintMismatchError,
    InProgressError,
    LeaseLostError,
    NotFoundError,
)
from idemgate._records import RecordService, epoch_ms, whole_second
from idemgate._settings import Settings
from idemgate._storage import Record, Status, open_storage

KEYS = ("a", "b")
FINGERPRINTS = (None, "sha256:1", "sha256:2")
LEASES_MS = (1, 999, 1000, 2500)
# The HTTP API sends whole seconds; 1500 checks that the service rounds an expiry up to one.
TTLS_MS = (1000, 1500, 2000, 30_000)
STEPS_MS = (0, 1, 499, 1000, 1001, 2500, 31_000)
DAY_MS = 86_400_000


@dataclasses.dataclass
class Modelled:
    """What the contract says is stored under one key."""

    status: Status
    fingerprint: str | None
    attempt: int
    lease_token: str
    lease_expires_at: int
    ttl_ms: int
    expires_at: int
    completed_at: int | None = None
    result: str | None = None

    def live(self, now: int) -> bool:
        return self.expires_at > now


class RecordsContract(RuleBasedStateMachine):
    storage_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.storage = open_storage(Settings(storage=self.storage_url))
        # Far ahead of the real clock, so no real expiry (DynamoDB's TTL) ever interferes.
        self.now = epoch_ms() + DAY_MS
        self.service = RecordService(self.storage, clock=lambda: self.now)
        self.namespace = f"m-{uuid.uuid4().hex[:12]}"
        self.model: dict[str, Modelled] = {}
        self.tokens: list[str] = ["never-issued"]

    def run(self, call: Any) -> Any:
        return self.loop.run_until_complete(call)

    def teardown(self) -> None:
        self.run(self.storage.close())
        self.loop.close()

    def live(self, key: str) -> Modelled | None:
        stored = self.model.get(key)
        return stored if stored is not None and stored.live(self.now) else None

    @initialize()
    def start(self) -> None:
        assert not self.model

    @rule(step=st.sampled_from(STEPS_MS))
    def time_passes(self, step: int) -> None:
        self.now += step

    @rule(
        key=st.sampled_from(KEYS),
        fingerprint=st.sampled_from(FINGERPRINTS),
        lease_ms=st.sampled_from(LEASES_MS),
        ttl_ms=st.sampled_from(TTLS_MS),
    )
    def claim(self, key: str, fingerprint: str | None, lease_ms: int, ttl_ms: int) -> None:
        stored = self.live(key)
        expected: type[Exception] | None = None
        if stored is not None:
            if (
                stored.fingerprint is not None
                and fingerprint is not None
                and stored.fingerprint != fingerprint
            ):
                expected = FingerprintMismatchError
            elif stored.status is Status.IN_PROGRESS and stored.lease_expires_at > self.now:
                expected = InProgressError
        call = self.service.claim(
            self.namespace, key, fingerprint=fingerprint, lease_ms=lease_ms, ttl_ms=ttl_ms
        )
        if expected is not None:
            with pytest.raises(expected):
                self.run(call)
            return
        answer = self.run(call)
        if stored is not None and stored.status is Status.COMPLETED:
            assert not answer.claimed
            assert (answer.record.result, answer.record.attempt) == (stored.result, stored.attempt)
            assert answer.record.completed_at == stored.completed_at
            return
        assert answer.claimed
        lease_end = self.now + lease_ms
        attempt = 1 if stored is None else stored.attempt + 1
        assert (answer.record.attempt, answer.record.lease_expires_at) == (attempt, lease_end)
        assert answer.record.lease_token not in self.tokens
        self.tokens.append(answer.record.lease_token)
        self.model[key] = Modelled(
            status=Status.IN_PROGRESS,
            fingerprint=fingerprint,
            attempt=attempt,
            lease_token=answer.record.lease_token,
            lease_expires_at=lease_end,
            ttl_ms=whole_second(ttl_ms),
            expires_at=whole_second(lease_end) + whole_second(ttl_ms),
        )

    def token(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(self.tokens))

    @rule(
        key=st.sampled_from(KEYS),
        data=st.data(),
        result=st.sampled_from(('{"n":1}', "null", '"x"')),
        ttl_ms=st.sampled_from((None, *TTLS_MS)),
    )
    def complete(self, key: str, data: st.DataObject, result: str, ttl_ms: int | None) -> None:
        token = self.token(data)
        stored = self.live(key)
        call = self.service.complete(
            self.namespace, key, lease_token=token, result=result, ttl_ms=ttl_ms
        )
        if stored is None or stored.lease_token != token:
            with pytest.raises(LeaseLostError):
                self.run(call)
            return
        answer = self.run(call)
        if stored.status is Status.COMPLETED:  # a repeat keeps the first result
            assert (answer.result, answer.completed_at) == (stored.result, stored.completed_at)
            return
        stored.status, stored.result, stored.completed_at = Status.COMPLETED, result, self.now
        stored.ttl_ms = whole_second(ttl_ms) if ttl_ms is not None else stored.ttl_ms
        stored.expires_at = whole_second(self.now) + stored.ttl_ms
        assert (answer.result, answer.completed_at, answer.attempt) == (
            result,
            self.now,
            stored.attempt,
        )

    @rule(key=st.sampled_from(KEYS), data=st.data())
    def release(self, key: str, data: st.DataObject) -> None:
        token = self.token(data)
        stored = self.model.get(key)
        call = self.service.release(self.namespace, key, lease_token=token)
        if (
            stored is not None
            and stored.status is Status.IN_PROGRESS
            and stored.lease_token == token
        ):
            self.run(call)
            del self.model[key]
        elif (
            (live := self.live(key)) is not None
            and live.status is Status.COMPLETED
            and (live.lease_token == token)
        ):
            with pytest.raises(LeaseLostError):
                self.run(call)
        else:
            self.run(call)

    @rule(key=st.sampled_from(KEYS), data=st.data(), lease_ms=st.sampled_from(LEASES_MS))
    def extend(self, key: str, data: st.DataObject, lease_ms: int) -> None:
        token = self.token(data)
        stored = self.live(key)
        call = self.service.extend(self.namespace, key, lease_token=token, lease_ms=lease_ms)
        if stored is None or stored.status is not Status.IN_PROGRESS or stored.lease_token != token:
            with pytest.raises(LeaseLostError):
                self.run(call)
            return
        assert self.run(call) == self.now + lease_ms
        stored.lease_expires_at = self.now + lease_ms
        stored.expires_at = whole_second(stored.lease_expires_at) + stored.ttl_ms

    @rule(key=st.sampled_from(KEYS))
    def get(self, key: str) -> None:
        stored = self.live(key)
        call = self.service.get(self.namespace, key)
        if stored is None:
            with pytest.raises(NotFoundError):
                self.run(call)
            return
        assert self.run(call) == Record(namespace=self.namespace, key=key, **vars(stored))

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: str) -> None:
        self.run(self.service.delete(self.namespace, key))
        self.model.pop(key, None)

    @invariant()
    def storage_holds_the_model(self) -> None:
        for key in KEYS:
            stored = self.run(self.storage.get(self.namespace, key))
            modelled = self.model.get(key)
            if modelled is None:
                assert stored is None
            else:
                assert stored == Record(namespace=self.namespace, key=key, **vars(modelled))
                assert stored.expires_at % 1000 == 0  # DynamoDB's TTL means the same instant


def test_random_operation_sequences_follow_the_contract(storage_url: str) -> None:
    machine = type("Contract", (RecordsContract,), {"storage_url": storage_url})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=30,
            stateful_step_count=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
