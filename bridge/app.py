"""The ASGI applications: the push app (the push path, handled by bridge/push.py, with the
producer's lifespan) and the management app (/healthz, /readyz, /metrics)."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import protocol
from .auth import Authenticator
from .config import Settings
from .delivery import Delivery
from .membership import ROUTER_HEADER, Membership
from .metrics import Metrics
from .protocol import CONTENT_TYPE, Refusal
from .push import PushEndpoint
from .risk import AgentRisk


async def not_found(request: Request, exc: Exception) -> Response:
    refusal = Refusal(404, protocol.BAD_GUID, f"no such path {request.url.path!r}", "path")
    return Response(protocol.failure_body(refusal), 404, media_type=CONTENT_TYPE.decode())


class PushFirst:
    """Hands the push path straight to its endpoint (which answers every outcome itself) and
    everything else (the lifespan, unknown paths) to the Starlette app, whose middleware layers
    would only add work to every push."""

    def __init__(self, path: str, endpoint: PushEndpoint, app: Starlette) -> None:
        self.path, self.endpoint, self.app = path, endpoint, app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            await self.endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(settings: Settings, delivery: Delivery, membership: Membership, metrics: Metrics, risk: AgentRisk,
               auth: Authenticator | None = None) -> PushFirst:
    """The push app: the push path, and Starlette for the producer's lifespan and unknown paths.
    `auth` is the Authenticator whose tokens may be replaced while serving (a watched token file)."""
    flush_bound = settings.publish_timeout_s

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await delivery.start()
        await membership.start()
        yield
        await delivery.drain_before_exit(settings.exit_drain_timeout_s)
        try:  # in-flight pushes are already answered; deliver what is still buffered, bounded
            await asyncio.wait_for(delivery.stop(), flush_bound)
        except TimeoutError:
            logging.getLogger("bridge").error("Kafka flush did not finish within %g s", flush_bound)

    app = Starlette(exception_handlers={404: not_found}, lifespan=lifespan)
    endpoint = PushEndpoint(settings, delivery, metrics, risk, auth, leaving=lambda: membership.leaving)
    return PushFirst(settings.push_path, endpoint, app)


def create_management_app(delivery: Delivery, membership: Membership, metrics: Metrics,
                          secret_problems: Callable[[], dict[str, Any]] = dict) -> Starlette:
    """/healthz (the process answers), /readyz (pushes can be kept, not draining), /metrics.
    `secret_problems()`: watched secret files whose newest version is not in service, shown in
    /readyz under `secrets` (still ready: the last good version serves)."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        # The verdict was applied to the spool before it became the verdict (bridge/membership.py).
        verdict = membership.probed(ROUTER_HEADER in request.headers)
        info = delivery.describe()
        problems = secret_problems()
        if problems:
            info["secrets"] = problems
        if verdict.ready:
            return JSONResponse({"status": "ready", **info})
        status = "leaving" if verdict.status == 404 else "not ready"
        return JSONResponse({"status": status, "reason": verdict.reason, **info}, verdict.status)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/healthz", healthz), Route("/readyz", readyz),
                             Route("/metrics", prometheus)])
