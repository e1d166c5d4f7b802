"""Study records from a dump of the registry: what ``alerts vocabulary learn PATH`` reads.

Accepted: a folder of ``.json`` files; a JSON-lines file (``.jsonl`` / ``.ndjson``, one record per
line); or one ``.json`` file. A JSON document is one v2 study record, a list of them, or a page of the
API's ``/studies`` answer (``PagedStudies``: ``{"studies": [...], "nextPageToken": ...}``). Records are
yielded one at a time (a JSON-lines file is read line by line), with where each came from, so a bad one
can be reported and skipped instead of stopping a long import.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSON_LINES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class Item:
    where: str  # "dump/NCT01.json", "studies.jsonl:12", "page.json#3"
    record: Mapping[str, Any] | None  # None: not a study record
    problem: str | None = None


def _from_document(where: str, document: Any) -> Iterator[Item]:
    if isinstance(document, Mapping) and isinstance(document.get("studies"), list):
        document = document["studies"]
    if isinstance(document, list):
        for i, item in enumerate(document):
            yield _one(f"{where}#{i}", item)
    else:
        yield _one(where, document)


def _one(where: str, item: Any) -> Item:
    if isinstance(item, Mapping) and isinstance(item.get("protocolSection"), Mapping):
        return Item(where, item)
    return Item(where, None, "not a ClinicalTrials.gov v2 study record (no protocolSection)")


def _file(path: Path) -> Iterator[Item]:
    if path.suffix.lower() in JSON_LINES:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    document = json.loads(line)
                except ValueError as exc:
                    yield Item(f"{path}:{number}", None, f"not JSON: {exc}")
                    continue
                yield from _from_document(f"{path}:{number}", document)
        return
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        yield Item(str(path), None, f"not JSON: {exc}")
        return
    yield from _from_document(str(path), document)


def studies(path: Path) -> Iterator[Item]:
    """Every record of the dump at ``path`` (a folder is read in file-name order, not recursively)."""
    if path.is_dir():
        for child in sorted(path.iterdir()):
            if child.is_file() and child.suffix.lower() in (".json", *JSON_LINES):
                yield from _file(child)
    else:
        yield from _file(path)
