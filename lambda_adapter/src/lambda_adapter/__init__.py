"""Deadline-bounded idempotency for AWS Lambda Python functions, through an idemgate gateway.

    from lambda_adapter import GatewayPersistenceLayer, IdempotencyConfig, idempotent

    store = GatewayPersistenceLayer()  # IDEMGATE_URL, IDEMGATE_NAMESPACE, IDEMGATE_TOKEN

    @idempotent(persistence_store=store, config=IdempotencyConfig(event_key_jmespath="id"))
    def handler(event, context): ...

See docs/lambda-adapter.md.
"""

from ._batch import (
    DeadLetterHandoff,
    EventKey,
    SqsBackoff,
    process_records,
    process_sqs_batch,
)
from ._config import IdempotencyConfig
from ._exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyError,
    IdempotencyKeyError,
    IdempotencyUnavailableError,
    IdempotencyValidationError,
)
from ._idempotency import idempotent, idempotent_function
from ._persistence import GatewayPersistenceLayer

__all__ = [
    "DeadLetterHandoff",
    "EventKey",
    "GatewayPersistenceLayer",
    "IdempotencyAlreadyInProgressError",
    "IdempotencyConfig",
    "IdempotencyError",
    "IdempotencyKeyError",
    "IdempotencyUnavailableError",
    "IdempotencyValidationError",
    "SqsBackoff",
    "idempotent",
    "idempotent_function",
    "process_records",
    "process_sqs_batch",
]
