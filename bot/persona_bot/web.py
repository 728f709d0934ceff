"""The HTTP side Kubernetes and Prometheus look at: /healthz (liveness), /readyz (readiness)
and /metrics."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


def health_app(ready: Callable[[], bool], database_up: Callable[[], bool]) -> web.Application:
    """Readiness means "taking updates"; a database outage is reported but does not make the
    bot unready, because it still answers (without history) and restarting would not help."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        body = {"ready": ready(), "database": "up" if database_up() else "down"}
        return web.json_response(body, status=200 if body["ready"] else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start `app` on host:port (0: a free port); returns the runner and the bound port."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, bound
