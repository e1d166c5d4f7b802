"""Queueing a recorded sign-up from the web: Celery's own task message, pushed with one LPUSH on the event loop.

``POST /api/subscriptions`` records one ``signup_requests`` row and queues its id for a worker
(``alerts.signups``). Celery's ``send_task`` did that in a worker thread: the thread hand-off, kombu's
producer and connection checks and a blocking Redis client were the largest part of a sign-up's CPU
(benchmarks/README.md). Here the message is the one ``send_task`` would push: Celery builds it
(``amqp.create_task_message``, protocol 2) and kombu's Redis envelope goes around it
(``tests/web/test_signup_queue.py`` compares the two field by field); it is pushed onto the task's queue
with an asyncio Redis client: one round trip, no thread.

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
        self._amqp = celery.amqp
        self._client: Any = redis.asyncio.Redis.from_url(
            str(celery.conf.broker_url), socket_timeout=10, socket_connect_timeout=10
        )

    def message(self, request_id: int) -> bytes:
        """The Redis list entry of one task message: Celery's protocol-2 message as ``send_task`` builds it,
        in kombu's Redis envelope (JSON body, base64, delivery info)."""
        task_id = str(uuid.uuid4())
        # As send_task calls it (celery.app.base.Celery.send_task): ignore_result unset (None), this thread's
        # reply_to; the origin node name made once per process.
        task = self._amqp.create_task_message(
            task_id, TASK, args=[request_id], reply_to=self._reply_to, ignore_result=None, origin=self._origin
        )
        envelope = {
            "body": base64.b64encode(json.dumps(task.body).encode()).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": task.headers,
            "properties": task.properties
            | {
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
