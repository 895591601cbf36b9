"""Bare Falcon WSGI app that responds `OK` to every ping: the ceiling for WSGI workers.

Run under gunicorn from this folder: `gunicorn -k sync baseline_wsgi:app`.
"""

from __future__ import annotations

import falcon


class PingResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response, check_id: str) -> None:
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "OK"

    # Falcon drops the body of a HEAD response, so HEAD and POST can share the GET handler.
    on_head = on_get
    on_post = on_get


app = falcon.App()
app.add_route("/ping/{check_id}", PingResource())
