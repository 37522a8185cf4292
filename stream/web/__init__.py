"""The lab's screen: ``stream-run --web [ADDR]`` and ``stream-arenas --web [ADDR]`` serve one page.

Live picture with each arena's ROI, behaviour and counters; trials (animal, group, start/stop,
elapsed, per-bin immobility) through the same ``TrialBook.command`` as ``stream-ctl``; an arena
editor (draw, drag, detect, save); the day's results (sortable, per-trial files, CSV and .xlsx).

    stream.web.security   address, token and the checks on every request
    stream.web.state      what the page shows, shared by the pipeline and the server threads
    stream.web.output     the pipeline output that feeds it (``stream.outputs.base.Output``)
    stream.web.server     aiohttp in its own thread; static/ holds the page (HTML, CSS, JS; no CDN)
"""

from __future__ import annotations

from pathlib import Path

from stream.web.output import WebOutput
from stream.web.security import DEFAULT_WEB_ADDR, WebAddress, parse_web_addr, web_token_for
from stream.web.state import ArenaTools, WebState

__all__ = ["DEFAULT_WEB_ADDR", "ArenaTools", "WebAddress", "WebOutput", "WebState", "parse_web_addr", "start_web",
           "web_token_for"]


def start_web(addr_text: str, token_file: Path | None, state: WebState):
    """Check the address and token (one-line errors), then serve ``state``; returns the running ``WebServer``."""
    from stream.web.server import WebServer

    addr = parse_web_addr(addr_text)
    token = web_token_for(addr, token_file)
    return WebServer(state, addr, token)
