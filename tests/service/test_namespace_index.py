"""create-table and the namespace index: new tables get it, tables made before it gain it."""

from __future__ import annotations

import boto3
from mypy_boto3_dynamodb import DynamoDBClient

from idemgate._cli import main
from idemgate._storage._dynamodb import NAMESPACE_INDEX, PARTITION_KEY
from idemgate.testing import DynamoDBLocal


def index_names(client: DynamoDBClient, table: str) -> list[str]:
    described = client.describe_table(TableName=table)["Table"]
    return [index["IndexName"] for index in described.get("GlobalSecondaryIndexes", [])]


def test_create_table_makes_the_namespace_index(dynamodb_local: DynamoDBLocal) -> None:
    assert main(["create-table", "--storage", dynamodb_local.storage_url("with-index")]) == 0
    client = boto3.client("dynamodb", endpoint_url=dynamodb_local.endpoint_url)
    assert index_names(client, "with-index") == [NAMESPACE_INDEX]


def test_create_table_adds_the_index_to_a_table_made_before_it(
    dynamodb_local: DynamoDBLocal,
) -> None:
    client = boto3.client("dynamodb", endpoint_url=dynamodb_local.endpoint_url)
    client.create_table(
        TableName="before-index",
        AttributeDefinitions=[{"AttributeName": PARTITION_KEY, "AttributeType": "S"}],
        KeySchema=[{"AttributeName": PARTITION_KEY, "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    assert main(["create-table", "--storage", dynamodb_local.storage_url("before-index")]) == 0
    assert index_names(client, "before-index") == [NAMESPACE_INDEX]
    assert main(["create-table", "--storage", dynamodb_local.storage_url("before-index")]) == 0
