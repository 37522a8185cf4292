"""The page's HTTP server: aiohttp in a thread of its own, serving ``WebState`` and the run's files.

Routes (all need the token where one is set; POSTs also the page's own origin, ``stream.web.security``)::

    GET  /                       the page (static/index.html; app.js and style.css under /static/)
    GET  /api/state              one snapshot (JSON)           GET /api/events   the same, once a second (SSE)
    GET  /api/frame.jpg          the latest frame (encoded on request, at most once a second)
    POST /api/trials             {"cmd": "start"|"stop", "arena", "animal", "group"} -> TrialBook.command
    GET  /api/arenas             the arenas and where the editor saves  POST /api/arenas/detect  the detector's
    POST /api/arenas/save        {"arenas": [{"id", "roi": [x, y, w, h]}]} -> the arena file (+ PNG)
    GET  /api/results            results.csv as JSON           GET /results.csv, /results.xlsx  downloads
    GET  /files/NAME             a trial's <trial_id>.frames.csv / .summary.json; the preview video

Why a thread with its own event loop: the pipeline is synchronous and must never wait for a
browser; aiohttp serves many slow clients from one thread. Handlers that may block (a trial command
waits for the next frame, the detector, the workbook) run in the loop's default executor.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from stream.errors import UserError
from stream.ids import check_trial_id
from stream.web.security import TOKEN_COOKIE, TOKEN_QUERY, WebAddress, check_request
from stream.web.state import WebState

__all__ = ["EVENT_PERIOD_S", "WebServer"]

log = logging.getLogger(__name__)

EVENT_PERIOD_S = 1.0  # counters and elapsed times move once a second on the page
MAX_BODY_BYTES = 64 * 1024  # an arena file of 100 arenas is ~5 kB; a start command < 200 bytes
START_TIMEOUT_S = 10.0  # binding a port takes milliseconds; more means something is wrong
TRIAL_FILE_SUFFIXES = (".frames.csv", ".summary.json")
STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
SECURITY_HEADERS = {
    # no framing (clickjacking of the start/stop buttons), no inline or foreign scripts, no sniffing
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                               "script-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _static(name: str) -> bytes:
    return resources.files("stream.web").joinpath("static", name).read_bytes()


class WebServer:
    """Serves ``state`` on ``addr`` until ``close()``; a busy port or a bad address is a one-line UserError."""

    def __init__(self, state: WebState, addr: WebAddress, token: str | None = None) -> None:
        from aiohttp import web

        self.state = state
        self.addr = addr
        self._token = token
        self._web = web
        self._loop = asyncio.new_event_loop()
        self._closing: asyncio.Event | None = None
        self._runner = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="web", daemon=True)
        self._thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(START_TIMEOUT_S)
        except OSError as exc:
            self._stop_loop()
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"--web {addr}: the port is already in use; stop the other program or choose "
                                "another") from None
            raise UserError(f"--web {addr}: cannot listen there ({exc.strerror or exc})") from None
        host = f"[{addr.host}]" if ":" in addr.host else addr.host
        self.url = f"http://{host}:{self.port}/"
        log.info("web page on %s", self.url)

    # -- life ----------------------------------------------------------------------------------
    async def _start(self) -> int:
        web = self._web
        self._closing = asyncio.Event()
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY_BYTES)
        app.add_routes([
            web.get("/", self._index), web.get("/static/{name}", self._static_file),
            web.get("/api/state", self._state), web.get("/api/events", self._events),
            web.get("/api/frame.jpg", self._frame), web.post("/api/trials", self._trials),
            web.get("/api/arenas", self._arenas), web.post("/api/arenas/detect", self._detect),
            web.post("/api/arenas/save", self._save_arenas), web.get("/api/results", self._results),
            web.get("/results.csv", self._results_csv), web.get("/results.xlsx", self._results_xlsx),
            web.get("/files/{name}", self._file),
        ])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.addr.host, self.addr.port, shutdown_timeout=1.0)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            raise
        return int(self._runner.addresses[0][1])

    async def _stop(self) -> None:
        if self._closing is not None:
            self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=5)
        except Exception:  # noqa: BLE001 - shutdown must go on
            log.debug("web server cleanup failed", exc_info=True)
        self._stop_loop()

    # -- helpers -------------------------------------------------------------------------------
    def _json(self, body: Any, status: int = 200):
        return self._web.json_response(body, status=status, headers=SECURITY_HEADERS,
                                       dumps=lambda o: json.dumps(o, default=str))

    def _refuse(self, status: int, why: str):
        return self._json({"ok": False, "error": why}, status)

    async def _body(self, request) -> dict:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise UserError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise UserError("the request body must be a JSON object")
        return body

    async def _blocking(self, fn, *args):
        return await self._loop.run_in_executor(None, fn, *args)

    # -- middleware: token, origin, host; one-line JSON errors -----------------------------------
    @property
    def _guard(self):
        web = self._web

        @web.middleware
        async def guard(request, handler):
            if self._token is not None and request.method == "GET" and request.path == "/" \
                    and TOKEN_QUERY in request.query:
                from stream.control_token import check_token

                if not check_token(request.query[TOKEN_QUERY], self._token):
                    return self._refuse(401, "wrong token")
                response = web.HTTPFound("/")  # the token leaves the address bar (and the history)
                response.set_cookie(TOKEN_COOKIE, self._token, httponly=True, samesite="Strict", path="/")
                raise response
            why = check_request(request.method, request.headers, request.cookies, self._token)
            if why is not None:
                log.warning("web request %s %s refused: %s", request.method, request.path, why)
                return self._refuse(401 if why.startswith("wrong or missing token") else 403, why)
            try:
                response = await handler(request)
            except UserError as exc:
                return self._refuse(400, str(exc))
            for k, v in SECURITY_HEADERS.items():
                response.headers.setdefault(k, v)
            return response

        return guard

    # -- page ----------------------------------------------------------------------------------
    async def _index(self, request):
        return self._web.Response(body=_static("index.html"), content_type="text/html", charset="utf-8")

    async def _static_file(self, request):
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise self._web.HTTPNotFound()
        return self._web.Response(body=_static(name), content_type=STATIC_FILES[name], charset="utf-8")

    async def _state(self, request):
        return self._json(self.state.snapshot())

    async def _events(self, request):
        web = self._web
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **SECURITY_HEADERS})
        await response.prepare(request)
        try:
            while not self._closing.is_set():
                data = json.dumps(self.state.snapshot(), default=str)
                await response.write(f"data: {data}\n\n".encode())
                try:
                    await asyncio.wait_for(self._closing.wait(), EVENT_PERIOD_S)
                except asyncio.TimeoutError:
                    pass
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    async def _frame(self, request):
        data = await self._blocking(self.state.jpeg)
        if data is None:
            return self._refuse(404, "no frame yet")
        return self._web.Response(body=data, content_type="image/jpeg")

    # -- trials: the same book and validation as stream-ctl -------------------------------------
    async def _trials(self, request):
        body = await self._body(request)
        book = self.state.book
        if book is None:
            return self._refuse(409, "no source is running (stream-arenas, or the run has not started or has ended)")
        cmd = body.get("cmd")
        if cmd not in ("start", "stop"):
            return self._refuse(400, f"unknown command {cmd!r}; use start or stop")
        req = {"cmd": cmd, "arena": body.get("arena")}
        if cmd == "start":
            req.update(animal=body.get("animal", ""), group=body.get("group", ""))
        reply = await self._blocking(book.command, req)
        if reply.get("ok"):
            log.warning("web page: %s arena %s%s", cmd, req["arena"],
                        f" animal {req.get('animal')!r}" if req.get("animal") else "")
        return self._json(reply, 200 if reply.get("ok") else 400)

    # -- arenas ----------------------------------------------------------------------------------
    async def _arenas(self, request):
        snap = self.state.snapshot()
        return self._json({"arenas": [{"id": a["id"], "roi": a["roi"]} for a in snap["arenas"]],
                           "size": (snap["frame"] or {}).get("size"), "arena_file": snap["arena_file"]})

    async def _detect(self, request):
        body = await self._body(request)
        view = body.get("view", "auto")
        image = self.state.latest_image()
        tools = self.state.arena_tools
        if image is None or tools is None:
            return self._refuse(409, "no frame yet" if tools is not None else "no arena detector on this page")
        arenas = await self._blocking(tools.detect, image, view if isinstance(view, str) else "")
        if not arenas:
            return self._refuse(404, f"no cylinder found (view {view}); draw the ROIs by hand")
        return self._json({"ok": True, "arenas": [{"id": a.id, "roi": [a.roi.x, a.roi.y, a.roi.w, a.roi.h]}
                                                  for a in arenas]})

    async def _save_arenas(self, request):
        from stream.arenas import arenas_from_data, check_arenas_fit

        body = await self._body(request)
        path, tools = self.state.arena_file, self.state.arena_tools
        if path is None or tools is None:
            return self._refuse(409, "this page has no arena file to save to")
        arenas = arenas_from_data({"arenas": body.get("arenas")}, "arenas")
        image = self.state.latest_image()
        if image is not None:
            check_arenas_fit(arenas, image.shape[1], image.shape[0], self.state.source or "the picture")
        await self._blocking(tools.save, arenas, path, image, self.state.source)
        if self.state.mode == "arenas":  # stream-arenas: the page now shows what was saved
            self.state.arenas = arenas
        log.warning("web page: %d arena(s) saved to %s", len(arenas), path)
        return self._json({"ok": True, "arena_file": str(path), "arenas": len(arenas),
                           "note": "used by the next run: stream-run --arenas " + str(path)})

    # -- results ---------------------------------------------------------------------------------
    def _results_path(self) -> Path | None:
        from stream.outputs.results import RESULTS_FILE

        out = self.state.out_dir
        return None if out is None else out / RESULTS_FILE

    def _rows(self) -> list[dict[str, str]]:
        from stream.outputs.results import read_table

        path = self._results_path()
        return read_table(path) if path is not None and path.exists() else []

    async def _results(self, request):
        from stream.outputs.results import table_columns

        rows = await self._blocking(self._rows)
        files = {}
        for r in rows:
            stem = r.get("trial_id", "")
            files[stem] = {s.split(".")[1]: f"/files/{stem}{s}" for s in TRIAL_FILE_SUFFIXES
                           if self._trial_file(f"{stem}{s}") is not None}
        preview = self.state.preview
        return self._json({"columns": table_columns(rows) if rows else [], "rows": rows, "files": files,
                           "preview": f"/files/{preview.name}" if preview is not None and preview.exists() else None})

    async def _results_csv(self, request):
        path = self._results_path()
        if path is None or not path.exists():
            return self._refuse(404, "no results.csv yet (it is written when the first trial ends)")
        return self._web.Response(body=await self._blocking(path.read_bytes), content_type="text/csv",
                                  headers={"Content-Disposition": 'attachment; filename="results.csv"'})

    async def _results_xlsx(self, request):
        from stream.workbook import workbook_bytes

        rows = await self._blocking(self._rows)
        if not rows:
            return self._refuse(404, "no results yet (the table is written when the first trial ends)")
        data = await self._blocking(workbook_bytes, rows)
        return self._web.Response(body=data, headers={
            "Content-Type": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "Content-Disposition": 'attachment; filename="results.xlsx"'})

    def _trial_file(self, name: str) -> Path | None:
        """``<out>/<name>`` or ``<out>/<video folder>/<name>``, for a trial file name and nothing else."""
        out = self.state.out_dir
        suffix = next((s for s in TRIAL_FILE_SUFFIXES if name.endswith(s)), None)
        if out is None or suffix is None:
            return None
        try:
            check_trial_id(name[: -len(suffix)])
        except UserError:
            return None
        for folder in (out, *(d for d in sorted(out.iterdir()) if d.is_dir())):
            if (folder / name).is_file():
                return folder / name
        return None

    async def _file(self, request):
        name = request.match_info["name"]
        preview = self.state.preview
        path = preview if preview is not None and name == preview.name and preview.is_file() else \
            await self._blocking(self._trial_file, name)
        if path is None:
            return self._refuse(404, f"no trial file {name!r}")
        return self._web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{path.name}"'})
