"""The FastAPI application: routers, problem answers, request context and storage lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from idemgate import __version__
from idemgate._auth import (
    AuthGate,
    IamVerifier,
    PolicyFile,
    default_sts_url,
    document_security,
)
from idemgate._exceptions import ConfigurationError
from idemgate._observability import (
    NamespaceCounters,
    RequestContextMiddleware,
    flush_logs,
    preregister_request_series,
)
from idemgate._problems import (
    body_too_large_response,
    error_response,
    install_problem_handlers,
    internal_error_response,
)
from idemgate._records import RecordService, epoch_ms
from idemgate._routers import console, health, records
from idemgate._settings import Settings
from idemgate._storage import Storage, open_storage
from idemgate._storage._sqlite import SQLiteStorage

__all__ = ["GatewayApp", "create_app"]

logger = logging.getLogger("idemgate")
# Room for the JSON around the largest result, and for its escapes.
_BODY_OVERHEAD_BYTES = 64 * 1024


async def _sweep_forever(storage: Storage, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            swept = await storage.sweep(now=epoch_ms())
        except Exception:
            logger.exception("sweeping expired records failed")
        else:
            if swept:
                logger.info("swept %d expired records", swept)


class GatewayApp(FastAPI):
    """FastAPI behind the gateway's own front layers, which every HTTP request passes.

    ``front`` is, from the outside in: the request context (request ID, body limit, metrics,
    access log), the auth gate (when there is a policy), then the records lane, which serves
    the records routes from their endpoints; everything else goes on to FastAPI
    (``behind_front``). A middleware added to FastAPI would only see that remainder, so adding
    one is refused: add a front layer.
    """

    front: ASGIApp | None = None
    # What handlers read per request (idemgate._deps): plain attributes, as ``app.state``
    # answers each read through a failed attribute look-up and a call.
    records: RecordService  # set by the lifespan, in each worker
    settings: Settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.front is not None:
            scope["app"] = self
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def behind_front(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)

    def build_middleware_stack(self) -> ASGIApp:
        # The request context answers unexpected errors, as a problem with the request ID:
        # Starlette's plain-text answer to them would come first.
        stack = super().build_middleware_stack()
        return stack.app if isinstance(stack, ServerErrorMiddleware) else stack

    def add_middleware(self, middleware_class: Any, *args: Any, **kwargs: Any) -> None:
        raise ConfigurationError(
            f"{getattr(middleware_class, '__name__', middleware_class)} would not see the "
            "records routes, which the records lane serves in front of FastAPI: add it to "
            "GatewayApp.front in idemgate/_app.py instead"
        )


def create_app(settings: Settings | None = None) -> GatewayApp:
    """The gateway app; ``settings`` default to the ``IDEMGATE_*`` environment."""
    settings = settings or Settings()
    policy = (
        PolicyFile(settings.auth_file, server_id=settings.auth_server_id)
        if settings.auth_file
        else None
    )
    iam = (
        IamVerifier(
            sts_url=settings.sts_url or default_sts_url(),
            timeout_ms=settings.sts_timeout_ms,
            max_age_s=settings.iam_max_age_s,
        )
        if policy
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: GatewayApp) -> AsyncIterator[None]:
        storage = open_storage(settings)
        app.records = RecordService(storage)
        sweeper = asyncio.create_task(_sweep_forever(storage, settings.sweep_interval_s))
        if isinstance(storage, SQLiteStorage):
            logger.info("serving with sqlite storage in %s", storage.path.resolve())
        else:
            logger.info("serving with %s storage", storage.name)
        try:
            yield
        finally:
            sweeper.cancel()
            await storage.close()
            if iam is not None:
                await iam.close()
            flush_logs()

    app = GatewayApp(
        title="idemgate",
        version=__version__,
        summary="An HTTP idempotency gateway: claim a key, run the work once, replay its result.",
        lifespan=lifespan,
        redirect_slashes=False,  # a path with a trailing slash is not found, not redirected
        docs_url=None,  # served by console.install_docs, without a CDN
        redoc_url=None,
        # The gateway has its own metrics and log, for every request alike.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.settings = settings
    app.state.namespace_counters = NamespaceCounters(max_namespaces=settings.metrics_max_namespaces)
    if policy is not None:
        describe = app.openapi
        app.openapi = lambda: app.openapi_schema or document_security(describe())  # type: ignore[method-assign]
    app.include_router(records.router)  # as declared: RecordsLane serves it from these routes
    app.include_router(records.listing_router)
    app.include_router(health.router)
    app.include_router(console.router)
    console.install_docs(app)
    install_problem_handlers(app)
    preregister_request_series(
        (route.path, method)
        for route in records.router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    )
    served: ASGIApp = records.RecordsLane(app.behind_front)
    if policy is not None:  # in open mode there is nothing to check
        served = AuthGate(served, policy=policy, iam=iam, error_response=error_response)
    app.front = RequestContextMiddleware(
        served,
        log_requests=settings.access_log,
        max_body_bytes=settings.max_result_bytes * 2 + _BODY_OVERHEAD_BYTES,
        namespaces=app.state.namespace_counters,
        internal_error=internal_error_response,
        body_too_large=body_too_large_response,
        settle_interval_ms=settings.access_log_flush_ms,
    )
    return app
