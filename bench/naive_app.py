"""`python -m bench.naive_app`: the receiver most teams write first, the benchmark's baseline.

A Starlette route that reads the request, parses the body with the standard json module and
awaits `send_and_wait` for one event after the other (aiokafka, acks=all, idempotent producer),
then answers success. It checks the token and nothing else. It is served by stock uvicorn, as
such a team would run it (uvloop and httptools, which uvicorn picks by itself when installed;
the same certificate; access log off), not by the bridge's own protocol class, and reads the same
BRIDGE_* settings for the listener and Kafka.
"""
from __future__ import annotations

import json
import sys
from contextlib import asynccontextmanager

import uvicorn
from aiokafka import AIOKafkaProducer
from aiokafka.helpers import create_ssl_context
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bridge import config


def create_naive_app(settings: config.Settings) -> Starlette:
    options = {"bootstrap_servers": settings.kafka_bootstrap_servers,
               "security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol == "SSL":
        options["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile,
                                                    certfile=settings.kafka_ssl_certfile,
                                                    keyfile=settings.kafka_ssl_keyfile)
    producer: AIOKafkaProducer | None = None  # made in the lifespan: aiokafka wants a running loop

    async def push(request: Request) -> JSONResponse:
        if request.headers.get("service_token") not in settings.service_tokens:
            return JSONResponse({"message": "unknown service_token", "retcode": "000-003"}, 403)
        data = json.loads(await request.body())
        for event in data["eventList"]:
            key = str(event.get("workNo") or data["workNo"]).encode()
            await producer.send_and_wait(settings.topic, json.dumps(event).encode(), key=key)
        return JSONResponse({"message": "success", "retcode": "0"})

    @asynccontextmanager
    async def lifespan(app: Starlette):
        nonlocal producer
        producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=True)
        await producer.start()
        yield
        await producer.stop()

    return Starlette(routes=[Route(settings.push_path, push, methods=["POST"])], lifespan=lifespan)


def main() -> int:
    settings = config.load()
    server = uvicorn.Server(uvicorn.Config(
        create_naive_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False,
        ssl_certfile=str(settings.tls_certfile), ssl_keyfile=str(settings.tls_keyfile)))
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
