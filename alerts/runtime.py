"""The objects a process needs (settings, database, transport, renderer, signer), built once per process.

Built lazily so a forked Celery child makes its own database connections instead of sharing its parent's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sqlalchemy import Engine

from alerts.addresses import AddressHasher
from alerts.config import Settings, get_settings
from alerts.contents import Renderings
from alerts.db import make_engine
from alerts.rendering import Renderer
from alerts.sending import Links
from alerts.tokens import Signer
from alerts.transports import Transport, build_transport


@dataclass
class Runtime:
    settings: Settings

    @cached_property
    def engine(self) -> Engine:
        return make_engine(self.settings.database_url)

    @cached_property
    def transport(self) -> Transport:
        return build_transport(self.settings)

    @cached_property
    def renderer(self) -> Renderer:
        return Renderer()

    @cached_property
    def renderings(self) -> Renderings:
        # Stored renderings this process has read (alerts.contents): immutable once written.
        return Renderings()

    @cached_property
    def signer(self) -> Signer:
        return Signer(self.settings.secret_key)

    @cached_property
    def hasher(self) -> AddressHasher:
        return AddressHasher(self.settings.secret_key)

    @cached_property
    def links(self) -> Links:
        from alerts.installation import installation_id

        domain = self.settings.from_email.rpartition("@")[2] or "localhost"
        return Links(self.settings.base_url, domain, installation_id(self.engine))

    @property
    def sender(self) -> tuple[str, str]:
        return self.settings.from_email, self.settings.from_name

    @property
    def site(self) -> dict[str, Any]:
        return {"site_name": self.settings.site_name, "base_url": self.settings.base_url}


_runtime: tuple[int, Runtime] | None = None


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None or _runtime[0] != os.getpid():
        _runtime = (os.getpid(), Runtime(get_settings()))
    return _runtime[1]


def set_runtime(runtime: Runtime | None) -> None:
    """Tests hand in a runtime built from their own settings."""
    global _runtime
    _runtime = (os.getpid(), runtime) if runtime is not None else None
