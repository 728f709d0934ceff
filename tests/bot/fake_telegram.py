"""A local fake of the Telegram Bot API, enough for aiogram's polling and webhook modes.

It serves the methods the bot calls, queues updates the test "sends" as users, and records
everything the bot did. aiogram posts multipart forms whose values are all strings (nested
objects as JSON) and expects `{"ok": true, "result": ...}` shaped like Telegram's own objects.

Also a token-free way to talk to a local `persona bot`:

    python -m tests.bot.fake_telegram --port 8443      # then type messages
    TELEGRAM_API_URL=http://127.0.0.1:8443 BOT_TOKEN=123456789:TEST-token_for-the-fake-api persona bot
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

from aiohttp import web

BOT_TOKEN = "123456789:TEST-token_for-the-fake-api"
MESSAGE_KEYS = ("message_id", "date", "chat", "from", "text")
# The Bot API's getFile refuses files over 20 MB ("Bad Request: file is too big").
DOWNLOAD_LIMIT = 20 * 1024 * 1024
# What Telegram sends for each kind of recording: the file_path folder and the object's fields.
RECORDINGS = {
    "voice": ("voice", "oga", {"mime_type": "audio/ogg"}),
    "audio": ("music", "mp3", {"mime_type": "audio/mpeg", "title": "recording"}),
    "video_note": ("video_notes", "mp4", {"length": 240}),
}


class BadRequest(Exception):
    """A call the real Bot API answers with 400 and this description."""


class NotFound(Exception):
    """A call the real Bot API answers with 404 "Not Found"."""


class FakeTelegram:
    def __init__(self, *, bot_id: int = 123456789, username: str = "persona_test_bot", long_poll: float = 0.3):
        self.bot_user = {"id": bot_id, "is_bot": True, "first_name": "Persona", "username": username}
        self.username = username
        self.long_poll = long_poll
        self.calls: list[tuple[str, dict[str, Any]]] = []  # (method, params) in order
        self.sent: list[dict[str, Any]] = []  # messages the bot sent
        self.callback_answers: list[dict[str, Any]] = []
        self.admins: dict[int, set[int]] = {}  # chat id -> user ids
        self.delivered_at: dict[int, float] = {}  # update id -> when getUpdates handed it out
        self.sent_at: list[float] = []  # parallel to `sent`
        self.files: dict[str, tuple[str, bytes]] = {}  # file_id -> (file_path, content)
        self.downloads: list[str] = []  # file paths the bot downloaded
        self.missing_files: set[str] = set()  # file ids getFile answers 404 (Telegram lost the file)
        self.expired_paths: set[str] = set()  # file paths whose download answers 404 (the link expired)
        self._pending: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1000)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._dispatch)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- what users do -------------------------------------------------------------------
    def user(self, user_id: int) -> dict[str, Any]:
        return {"id": user_id, "is_bot": False, "first_name": f"User{user_id}"}

    def message(self, text: str, **options: Any) -> dict[str, Any]:
        """Queue a text message from a user (for getUpdates); `options` as for `message_update`."""
        return self._queue(self.message_update(text, **options))

    def message_update(
        self,
        text: str,
        *,
        chat_id: int = 1,
        user_id: int | None = None,
        chat_type: str = "private",
        mention: bool = False,
        reply_to: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """An update carrying a user's text message (what Telegram would send)."""
        user_id = user_id if user_id is not None else chat_id
        entities = []
        if mention:
            handle = f"@{self.username}"
            text = f"{handle} {text}"
            entities.append({"type": "mention", "offset": 0, "length": len(handle)})
        if text.startswith("/"):
            entities.append({"type": "bot_command", "offset": 0, "length": len(text.split()[0])})
        chat = {"id": chat_id, "type": chat_type}
        if chat_type != "private":
            chat["title"] = f"Group {chat_id}"
        message = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": chat,
            "from": self.user(user_id),
            "text": text,
        }
        if entities:
            message["entities"] = entities
        if reply_to is not None:
            message["reply_to_message"] = {key: reply_to[key] for key in MESSAGE_KEYS}
        return {"update_id": next(self._update_ids), "message": message}

    def recording(
        self, data: bytes, *, duration: int, kind: str = "voice", declared_size: int | None = None, **options: Any
    ) -> dict[str, Any]:
        """Queue a voice message, audio file or video note holding `data` (`options` as for
        `message_update`; `declared_size` overrides the file_size Telegram reports)."""
        folder, extension, fields = RECORDINGS[kind]
        number = len(self.files)
        file_id = f"AwACAgIAAxkBAAI{number:06d}{kind}"
        self.files[file_id] = (f"{folder}/file_{number}.{extension}", data)
        update = self.message_update("", **options)
        del update["message"]["text"]
        update["message"][kind] = {
            "file_id": file_id, "file_unique_id": f"AgAD{number:06d}", "duration": duration,
            "file_size": len(data) if declared_size is None else declared_size, **fields,
        }
        return self._queue(update)

    def vote(self, sent: dict[str, Any], *, user_id: int, up: bool = True) -> dict[str, Any]:
        """Queue a press on a reply's 👍 or 👎 button."""
        buttons = sent["reply_markup"]["inline_keyboard"][0]
        data = buttons[0 if up else 1]["callback_data"]
        message = {key: sent[key] for key in (*MESSAGE_KEYS, "reply_markup")}
        update_id = next(self._update_ids)
        return self._queue({
            "update_id": update_id,
            "callback_query": {
                "id": f"query-{update_id}",
                "from": self.user(user_id),
                "chat_instance": str(sent["chat"]["id"]),
                "message": message,
                "data": data,
            }
        })

    def _queue(self, update: dict[str, Any]) -> dict[str, Any]:
        self._pending.append(update)
        asyncio.get_running_loop().create_task(self._notify())
        return update

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- what tests wait for -------------------------------------------------------------
    async def wait_sent(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until the bot has sent `count` messages in total; returns them all."""
        await self._wait(lambda: len(self.sent) >= count, timeout, f"{count} sent messages")
        return self.sent

    async def wait_calls(self, method: str, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        await self._wait(lambda: len(self.method_calls(method)) >= count, timeout, f"{count} {method} calls")
        return self.method_calls(method)

    def method_calls(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == method]

    async def _wait(self, ready, timeout: float, what: str) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(ready), timeout)
            except TimeoutError:
                raise AssertionError(f"timed out waiting for {what}; bot sent {[m['text'] for m in self.sent]}") from None

    # --- the Bot API ---------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = dict(await request.post()) if request.method == "POST" else dict(request.query)
        self.calls.append((method, params))
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            return web.json_response({"ok": False, "error_code": 404, "description": f"Not Found: {method}"}, status=404)
        try:
            result = await handler(params)
        except BadRequest as exc:
            return web.json_response({"ok": False, "error_code": 400, "description": f"Bad Request: {exc}"}, status=400)
        except NotFound:
            return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)
        async with self._changed:
            self._changed.notify_all()
        return web.json_response({"ok": True, "result": result})

    async def _api_getMe(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.bot_user

    async def _api_getUpdates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset", 0))
        self._pending = [u for u in self._pending if u["update_id"] >= offset]
        if not self._pending:
            wait = min(float(params.get("timeout", 0)), self.long_poll)
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait_for(lambda: bool(self._pending)), wait)
                except TimeoutError:
                    pass
        now = time.perf_counter()
        for update in self._pending:
            self.delivered_at.setdefault(update["update_id"], now)
        return list(self._pending)

    async def _api_sendMessage(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        chat = {"id": chat_id, "type": "private" if chat_id > 0 else "group"}
        message = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": chat,
            "from": self.bot_user,
            "text": params["text"],
        }
        for key in ("reply_markup", "reply_parameters"):  # nested objects arrive as JSON text
            if key in params:
                message[key] = json.loads(params[key])
        self.sent.append(message)
        self.sent_at.append(time.perf_counter())
        return message

    async def _api_getChatMember(self, params: dict[str, Any]) -> dict[str, Any]:
        user_id = int(params["user_id"])
        admin = user_id in self.admins.get(int(params["chat_id"]), set())
        if admin:
            return {"status": "creator", "user": self.user(user_id), "is_anonymous": False}
        return {"status": "member", "user": self.user(user_id)}

    async def _api_answerCallbackQuery(self, params: dict[str, Any]) -> bool:
        self.callback_answers.append(params)
        return True

    async def _api_getFile(self, params: dict[str, Any]) -> dict[str, Any]:
        """As Telegram: an unknown file_id and a file over 20 MB are refused (400), a lost one is not
        found (404); the file_path is valid for download at /file/bot<token>/<file_path>."""
        file_id = params.get("file_id", "")
        if file_id in self.missing_files:
            raise NotFound()
        if file_id not in self.files:
            raise BadRequest("invalid file_id")
        path, data = self.files[file_id]
        if len(data) > DOWNLOAD_LIMIT:
            raise BadRequest("file is too big")
        return {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": len(data), "file_path": path}

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != BOT_TOKEN:
            return web.Response(status=401, text="Unauthorized")
        path = request.match_info["path"]
        for file_path, data in self.files.values():
            if file_path == path and len(data) <= DOWNLOAD_LIMIT and path not in self.expired_paths:
                self.downloads.append(path)
                return web.Response(body=data, content_type="application/octet-stream")
        return web.Response(status=404, text="Not Found")

    async def _api_sendChatAction(self, params: dict[str, Any]) -> bool:
        return True

    async def _api_setMyCommands(self, params: dict[str, Any]) -> bool:
        return True

    async def _api_setWebhook(self, params: dict[str, Any]) -> bool:
        return True

    async def _api_deleteWebhook(self, params: dict[str, Any]) -> bool:
        return True


async def _chat(port: int) -> None:
    """Type messages as a private-chat user; print what the bot answers."""
    fake = FakeTelegram(long_poll=10)
    url = await fake.start(port)
    print(f"fake Bot API on {url}\nrun: TELEGRAM_API_URL={url} BOT_TOKEN={BOT_TOKEN} persona bot\ntype a message:")
    loop = asyncio.get_running_loop()
    try:
        while line := (await loop.run_in_executor(None, input, "you> ")).strip():
            fake.message(line, chat_id=1)
            for reply in (await fake.wait_sent(len(fake.sent) + 1, timeout=120))[-1:]:
                print(f"bot> {reply['text']}")
    except EOFError:
        pass
    except AssertionError as exc:  # no answer in time: is the bot running?
        print(exc)
    finally:
        await fake.stop()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="A fake Telegram Bot API to chat with a local bot.")
    parser.add_argument("--port", type=int, default=8443)
    asyncio.run(_chat(parser.parse_args().port))
