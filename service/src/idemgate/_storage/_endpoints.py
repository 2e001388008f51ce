"""Where the DynamoDB client connects: endpoint, proxy and trust, as the AWS SDKs decide them.

The endpoint is botocore's own answer, not a rule written here: a botocore DynamoDB client is
built once (with placeholder credentials, so nothing is resolved) and asked, through its
``before-send`` event, for the URL it would send a call to. So botocore's endpoint rules and
partition data decide it, with everything it reads: the region's partition (``amazonaws.com``,
``amazonaws.com.cn``, GovCloud, ...), ``AWS_USE_FIPS_ENDPOINT``,
``AWS_USE_DUALSTACK_ENDPOINT``, ``AWS_ENDPOINT_URL_DYNAMODB``, ``AWS_ENDPOINT_URL`` and their
shared-config forms. An ``endpoint_url`` in the storage URL wins over all of them, as an
``endpoint_url`` argument does in the SDKs.

HTTPS is verified against ``AWS_CA_BUNDLE`` (or ``ca_bundle`` in the shared config) when set,
else the system trust store. ``HTTPS_PROXY`` is honoured for ``https`` endpoints, unless
``NO_PROXY`` covers the host; ``HTTP_PROXY`` is not used (plain ``http`` endpoints are local
ones: DynamoDB Local, test servers).
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from idemgate._exceptions import ConfigurationError

if TYPE_CHECKING:
    import botocore.session

__all__ = ["Route", "resolve_route"]


@dataclass(frozen=True, slots=True)
class Route:
    """The endpoint to call, the proxy to tunnel through (if any), the CA bundle (if any)."""

    endpoint: str
    proxy: str | None = None
    ca_bundle: str | None = None


class _Resolved(Exception):  # botocore's answer, carried out of its call
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def _endpoint_botocore_would_call(session: botocore.session.Session, region: str) -> str:
    import botocore.exceptions

    def resolved(request: Any, **_: Any) -> None:
        raise _Resolved(request.url)

    try:
        client: Any = session.create_client(
            "dynamodb",
            region_name=region,
            aws_access_key_id="unused",
            aws_secret_access_key="unused",
        )
        client.meta.events.register("before-send.dynamodb.DescribeTable", resolved)
        try:
            client.describe_table(TableName="any")
        finally:
            client.close()
    except _Resolved as answer:
        url = urlsplit(answer.url)
        return f"{url.scheme}://{url.netloc}"
    except (botocore.exceptions.BotoCoreError, ValueError) as exc:
        raise ConfigurationError(f"no DynamoDB endpoint for region {region!r}: {exc}") from exc
    raise ConfigurationError(f"no DynamoDB endpoint for region {region!r}")


def resolve_route(
    session: botocore.session.Session, region: str, endpoint_url: str | None
) -> Route:
    """The route to DynamoDB in ``region`` (see the module docstring)."""
    endpoint = endpoint_url or _endpoint_botocore_would_call(session, region)
    url = urlsplit(endpoint)
    proxy = None
    proxies = urllib.request.getproxies_environment()
    if url.scheme == "https" and "https" in proxies and not urllib.request.proxy_bypass(url.netloc):
        proxy = proxies["https"]
    ca_bundle = session.get_config_variable("ca_bundle") or None
    return Route(endpoint, proxy, ca_bundle)
