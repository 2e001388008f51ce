"""Deadline-bounded idempotency for AWS Lambda Python functions, through an idemgate gateway.

    from lambda_adapter import GatewayPersistenceLayer, IdempotencyConfig, idempotent

    store = GatewayPersistenceLayer()  # IDEMGATE_URL, IDEMGATE_NAMESPACE, IDEMGATE_TOKEN

    @idempotent(persistence_store=store, config=IdempotencyConfig(event_key_jmespath="id"))
    def handler(event, context): ...

Powertools' names are here too (``DynamoDBPersistenceLayer``, the serializers, the exceptions),
so a migration changes the import lines only. See docs/lambda-adapter.md.
"""

from ._batch import (
    DeadLetterHandoff,
    EventKey,
    SqsBackoff,
    process_records,
    process_sqs_batch,
)
from ._config import DataRecord, IdempotencyConfig, IdempotentHookFunction, LambdaContext
from ._exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyError,
    IdempotencyInconsistentStateError,
    IdempotencyInvalidStatusError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyKeyError,
    IdempotencyModelTypeError,
    IdempotencyNoSerializationModelError,
    IdempotencyPersistenceConfigError,
    IdempotencyPersistenceConnectionError,
    IdempotencyPersistenceConsistencyError,
    IdempotencyPersistenceLayerError,
    IdempotencyResultNotStoredError,
    IdempotencyUnavailableError,
    IdempotencyValidationError,
)
from ._idempotency import idempotent, idempotent_function
from ._persistence import DynamoDBPersistenceLayer, GatewayPersistenceLayer
from ._serialization import (
    BaseIdempotencyModelSerializer,
    BaseIdempotencySerializer,
    CustomDictSerializer,
    DataclassSerializer,
    NoOpSerializer,
    PydanticSerializer,
)

__all__ = [
    "BaseIdempotencyModelSerializer",
    "BaseIdempotencySerializer",
    "CustomDictSerializer",
    "DataRecord",
    "DataclassSerializer",
    "DeadLetterHandoff",
    "DynamoDBPersistenceLayer",
    "EventKey",
    "GatewayPersistenceLayer",
    "IdempotencyAlreadyInProgressError",
    "IdempotencyConfig",
    "IdempotencyError",
    "IdempotencyInconsistentStateError",
    "IdempotencyInvalidStatusError",
    "IdempotencyItemAlreadyExistsError",
    "IdempotencyItemNotFoundError",
    "IdempotencyKeyError",
    "IdempotencyModelTypeError",
    "IdempotencyNoSerializationModelError",
    "IdempotencyPersistenceConfigError",
    "IdempotencyPersistenceConnectionError",
    "IdempotencyPersistenceConsistencyError",
    "IdempotencyPersistenceLayerError",
    "IdempotencyResultNotStoredError",
    "IdempotencyUnavailableError",
    "IdempotencyValidationError",
    "IdempotentHookFunction",
    "LambdaContext",
    "NoOpSerializer",
    "PydanticSerializer",
    "SqsBackoff",
    "idempotent",
    "idempotent_function",
    "process_records",
    "process_sqs_batch",
]
