"""This installation's identity: a random id generated once and kept in the database.

Message-IDs carry it (``<delivery-42.3f9c...@example.org>``): delivery ids start again at 1 after a
database rebuild and run in parallel in staging and production, and a Message-ID that repeats makes mail
systems drop the later email as a duplicate. The id belongs to the database, not to the host or the
settings, so every process of one installation uses the same one and a re-send of a delivery keeps its
Message-ID.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from alerts.db import transaction
from alerts.models import Installation

_ROW = 1


def installation_id(engine: Engine) -> str:
    """The id, created on first use; two processes racing to create it end up with the same one."""
    for _attempt in range(2):
        with transaction(engine) as session:
            found = session.scalar(select(Installation.installation_id).where(Installation.id == _ROW))
            if found is not None:
                return str(found)
        try:
            with transaction(engine) as session:
                session.add(Installation(id=_ROW, installation_id=uuid.uuid4().hex))
        except IntegrityError:
            continue  # another process created it first: read theirs
    with transaction(engine) as session:
        return str(session.scalars(select(Installation.installation_id).where(Installation.id == _ROW)).one())
