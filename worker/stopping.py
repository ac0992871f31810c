"""The one thing an HTTP handler asks of the server running it: is it stopping?

The server (worker/http/server.py) sets this event once shutdown's grace time is over; handlers
still waiting on a client or on CouchDB (the webhook, worker/incoming/webhook.py) then answer 503
at once. A module of its own so the handlers need not know the server.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

STOPPING_KEY = web.AppKey("stopping", asyncio.Event)
