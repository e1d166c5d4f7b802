"""Queueing a recorded sign-up from the web: Celery's own task message, pushed with one LPUSH on the event loop.

``POST /api/subscriptions`` records one ``signup_requests`` row and queues its id for a worker
(``alerts.signups``). Celery's ``send_task`` did that in a worker thread: the thread hand-off, kombu's
producer and connection checks and a blocking Redis client were the largest part of a sign-up's CPU
(benchmarks/README.md). Here the message is the one ``send_task`` would push (protocol 2, kombu's Redis
envelope: ``tests/web/test_signup_queue.py`` compares the two field by field), built from parts made once
per process, and pushed onto the task's queue with an asyncio Redis client: one round trip, no thread.

Only for a Redis broker; with any other (the embedded filesystem broker) the web keeps ``send_task``.
A push that fails leaves the recorded row waiting: the request fails (500), and maintenance queues rows
left waiting longer than ``alerts.signups.REQUEUE_AFTER_S`` again, so nothing is lost.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import redis.asyncio
from celery import Celery
from celery.utils.nodenames import anon_nodename

TASK = "alerts.subscriptions.process_signup"
REDIS_SCHEMES = ("redis://", "rediss://")
# The fourth part of a protocol-2 body: no callbacks, errbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def usable(celery: Celery) -> bool:
    """Whether ``celery``'s broker is a plain Redis this module can push to (else the web keeps ``send_task``)."""
    return not celery.conf.broker_transport and str(celery.conf.broker_url or "").startswith(REDIS_SCHEMES)


class SignupQueue:
    """Pushes ``alerts.subscriptions.process_signup(request_id)`` where and as ``celery.send_task`` would."""

    def __init__(self, celery: Celery) -> None:
        # Where Celery's own routing and broker settings send the task (alerts.tasks.app): one place decides.
        queue = celery.amqp.router.route({}, TASK)["queue"]
        prefix = (celery.conf.broker_transport_options or {}).get("global_keyprefix") or ""
        self.key = f"{prefix}{queue.name}"  # kombu's global_keyprefix, then the queue's list
        self._routing_key = queue.routing_key or queue.name
        # What send_task fills in from the process, the same for every message of this process.
        self._origin = anon_nodename()
        self._reply_to = str(celery.thread_oid)
        self._client: Any = redis.asyncio.Redis.from_url(
            str(celery.conf.broker_url), socket_timeout=10, socket_connect_timeout=10
        )

    def message(self, request_id: int) -> bytes:
        """The Redis list entry of one task message (kombu's envelope around Celery's protocol 2)."""
        task_id = str(uuid.uuid4())
        args = [request_id]
        body = json.dumps([args, {}, _EMBED]).encode()
        headers = {
            "lang": "py",
            "task": TASK,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(args),
            "kwargsrepr": "{}",
            "origin": self._origin,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        envelope = {
            "body": base64.b64encode(body).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": task_id,
                "reply_to": self._reply_to,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": self._routing_key},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return json.dumps(envelope).encode()

    async def push(self, request_id: int) -> None:
        # LPUSH, as kombu's Redis channel puts a message of priority 0 (workers BRPOP the other end).
        await self._client.lpush(self.key, self.message(request_id))

    async def close(self) -> None:
        await self._client.aclose()
