"""Bare Falcon ASGI app that responds `OK` to every ping: the ceiling for ASGI workers.

Run under gunicorn from this folder: `gunicorn -k uvicorn_worker.UvicornWorker baseline_asgi:app`.
"""

from __future__ import annotations

import falcon
import falcon.asgi


class PingResource:
    async def on_get(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response, check_id: str
    ) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "OK"

    # Falcon drops the body of a HEAD response, so HEAD and POST can share the GET handler.
    on_head = on_get
    on_post = on_get


app = falcon.asgi.App()
app.add_route("/ping/{check_id}", PingResource())
