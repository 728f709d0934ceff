"""A stand-in for TorchServe speaking the inference contract (contract 3: `POST /predictions/fleet`,
the persona in the body, bearer token), whose speed and availability the tests control. Replies
stream as the fleet's do: a preview per word, then the final event."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web
from pydantic import ValidationError

from personafleet.inference import FLEET_MODEL, STREAM_CONTENT_TYPE, InferenceRequest

STUB_TOKEN = "stub-inference-token"
STUB_BASE = "ai-forever/FRED-T5-large"
STUB_FACTS = ["Работаю DevOps-инженером"]  # "retrieved" for every request that asks for its facts


class StubModel:
    def __init__(self, *, token: str = STUB_TOKEN, delay: float = 0.0):
        self.token = token
        self.delay = delay  # seconds before an answer's first word
        self.word_delay = 0.0  # seconds between two words of a streamed answer
        self.words = 0  # > 0: replies of this many words instead of the echo
        self.break_streams = 0  # the next N streams break off after two words (a worker restart)
        self.cancelled = 0  # streams whose client went away before the end
        self.failing = False  # answer 503 (a model that is down)
        self.version = "1"  # the model_version it answers as
        self.requests: list[tuple[str, InferenceRequest]] = []
        # The `asr` model: answers `transcript` for any 16-bit PCM body; `asr_failing` -> 503;
        # not `asr_served` -> TorchServe's 404 for a model it does not serve.
        self.transcript = "база тормозит после миграции"
        self.asr_failing = False
        self.asr_served = True
        self.asr_delay = 0.0
        self.asr_seconds: list[float] = []  # audio length of each transcription request
        self.busy_seconds: list[float] = []  # time spent inside each answer
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/predictions/asr", self._transcribe)  # before the catch-all model route
        app.router.add_post("/predictions/{model}", self._predict)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def wait_for_request(self, timeout: float = 5.0) -> None:
        """Until the bot has asked the model something (the answer may still be in the works)."""
        deadline = time.monotonic() + timeout
        while not self.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _predict(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthorized", "detail": "Token authorization failed"}, status=401)
        if self.failing:
            return web.json_response({"error": "unavailable", "detail": "no worker"}, status=503)
        try:
            body = InferenceRequest.model_validate_json(await request.read())
        except ValidationError as exc:
            return web.json_response({"error": "bad_request", "detail": str(exc.errors()[0]["msg"])}, status=400)
        if request.match_info["model"] != FLEET_MODEL or body.persona is None:
            return web.json_response({"error": "unknown_persona", "detail": "no such model or persona"}, status=404)
        persona = body.persona
        if body.about:  # what the fleet handler answers from the store (persona_serving.requests.describe)
            return web.json_response({"persona": persona, "model_version": "1", "base": STUB_BASE,
                                      "trained_at": "2026-12-01T14:03:00Z", "facts": len(STUB_FACTS)})
        self.requests.append((persona, body))
        if self.delay:
            await asyncio.sleep(self.delay)
        reply = " ".join(f"word{i}" for i in range(self.words)) if self.words else f"[{persona}] re: {body.message}"
        words = reply.split()
        stream = web.StreamResponse(headers={"Content-Type": STREAM_CONTENT_TYPE})
        await stream.prepare(request)
        try:
            for i, word in enumerate(words[:-1]):
                if self.break_streams and i == 2:
                    self.break_streams -= 1
                    request.transport.close()  # as when TorchServe's worker dies mid-stream
                    return stream
                preview = {"delta": (" " if i else "") + word, "tokens": i + 1} | ({} if i else {"model_version": self.version})
                await stream.write(json.dumps(preview).encode() + b"\n")
                await asyncio.sleep(self.word_delay)
            self.busy_seconds.append(time.perf_counter() - started)
            final = {"reply": reply, "persona": persona, "model_version": self.version, "tokens": len(words), "finish_reason": "stop"}
            final |= {"facts": STUB_FACTS} if body.show_facts else {}
            await stream.write(json.dumps(final, ensure_ascii=False).encode() + b"\n")
            await stream.write_eof()
        except ConnectionResetError:
            self.cancelled += 1
        return stream

    async def _transcribe(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "unauthorized", "detail": "Token authorization failed"}, status=401)
        if not self.asr_served:
            return web.json_response({"code": 404, "type": "ModelNotFoundException", "message": "Model not found: asr"},
                                     status=404)
        if self.asr_failing:
            return web.json_response({"error": "unavailable", "detail": "no worker"}, status=503)
        body = await request.read()
        if request.content_type != "application/x-pcm-s16le" or not body or len(body) % 2:
            return web.json_response({"error": "invalid_audio", "detail": "expected 16-bit PCM"}, status=400)
        seconds = len(body) / 2 / 16_000
        self.asr_seconds.append(seconds)
        if self.asr_delay:
            await asyncio.sleep(self.asr_delay)
        return web.json_response({"text": self.transcript, "seconds": seconds})
