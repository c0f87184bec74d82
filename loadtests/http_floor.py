"""The benchmark's HTTP floor: uvicorn (uvloop + httptools, like the gateway) answering a bid request with
no work. It reads the body, parses it with orjson and answers a no-bid naming the request's id.

What it measures is what any Python HTTP hop costs on the machine at hand, before any feature, model or
auction work: the part of the gateway's added latency and CPU that no data-plane change can remove.

    uvicorn loadtests.http_floor:app --loop uvloop --http httptools
"""

from __future__ import annotations

from typing import Final

import orjson
from starlette.types import Receive, Scope, Send

_JSON: Final = [(b"content-type", b"application/json")]
_OK: Final = b'{"status":"ok"}'


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":  # lifespan: nothing to start
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
            await receive()
            await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    answer = _OK
    if scope["method"] == "POST":
        request = orjson.loads(body)
        answer = orjson.dumps({"id": request.get("id", ""), "seatbid": [], "nbr": 0})
    # With its length (as the gateway sends it): without one uvicorn would switch to chunked encoding.
    headers = [*_JSON, (b"content-length", str(len(answer)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": answer})
