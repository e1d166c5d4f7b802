"""A page's template rendered once per process with markers where its per-request values go, then filled.

Why: Jinja's work for a long page (blocks, includes, a context per include, an attribute lookup and an escape
per ``{{ }}``) was most of the manage page's CPU, while all but a few dozen short values of its 22 KB are the
same for every subscriber. Here the template itself is still what writes the page: it is rendered with a
``Slot`` (a marker text) standing for each per-request value, the output is cut at the markers into static
bytes (encoded once), and each request only escapes its own values into the gaps.

What decides the page's structure (which ``{% if %}`` branch, how many items) must be real values of the
render, not slots; the caller keys its skeletons by them. A slot refuses to be tested (unless made with the
truth its key gives it), compared, measured or sliced (``TypeError`` at the skeleton's render), and a marker
the template changed instead of printing is refused when the output is cut, so a template that starts to
branch on a slot fails loudly instead of filling wrong text. A filter that needs the real value (a menu
marking its chosen option) defers itself to fill time with ``Slot.then``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from markupsafe import escape

# Private-use characters: never produced by escaping, and no real value reaches the render (slots stand in).
_OPEN, _CLOSE = "\ue000", "\ue001"
_MARKER = re.compile(f"{_OPEN}(\\d+){_CLOSE}")

Fill = Callable[[Any], bytes]


def escaped(value: Any) -> bytes:
    """What Jinja's autoescaping prints for ``{{ value }}``, as UTF-8."""
    if type(value) is str:
        # markupsafe's escape without its Markup objects (most of its cost for short values); the same five
        # characters and entities (tests/web/test_skeleton.py compares them).
        text = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return text.replace("'", "&#39;").replace('"', "&#34;").encode()
    if type(value) is int:  # digits: nothing to escape
        return str(value).encode()
    return str(escape(value)).encode()


class Slot(str):
    """A per-request value, as a marker text, while a skeleton is rendered."""

    key: str
    fill: Fill
    truth: bool | None
    _slots: list[Slot]

    def __new__(cls, slots: list[Slot], key: str, fill: Fill = escaped, truth: bool | None = None) -> Slot:
        """``truth``: what ``{% if slot %}`` gives, when the caller's key already says whether the value is
        there (an optional line); None: the template may only print the slot."""
        self = super().__new__(cls, f"{_OPEN}{len(slots)}{_CLOSE}")
        self.key, self.fill, self.truth, self._slots = key, fill, truth, slots
        slots.append(self)
        return self

    def then(self, apply: Fill) -> Slot:
        """A slot for ``apply(value)``'s bytes printed as they are (``apply`` escapes what it needs)."""
        return Slot(self._slots, self.key, apply)

    def __html__(self) -> str:
        # Printed unchanged by autoescaping: the real value is escaped when it fills the gap.
        return str.__str__(self)

    def _refuse(self, *_: object) -> NoReturn:
        raise TypeError(f"slot {self.key!r} used where the page's structure depends on it: make it a real value")

    # What filters and tests do to a string: each would work on the marker instead of the value.
    __len__ = __getitem__ = __iter__ = __contains__ = __lt__ = __le__ = __gt__ = __ge__ = __mod__ = __mul__ = _refuse
    lower = upper = capitalize = title = casefold = swapcase = _refuse  # type: ignore[assignment]
    replace = strip = lstrip = rstrip = split = rsplit = splitlines = _refuse  # type: ignore[assignment]
    center = ljust = rjust = zfill = format = startswith = endswith = _refuse  # type: ignore[assignment]

    def __bool__(self) -> bool:
        if self.truth is None:
            self._refuse()
        return self.truth

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Slot):  # a dict of slots (the page's frequencies by item id): their markers differ
            return other is self
        self._refuse()

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__


@dataclass(frozen=True)
class Skeleton:
    """A rendered page cut at its slots: the slots it prints (key, fill), then its static bytes and, after each
    but the last, which slot goes next (a value printed several times, the token in every form's action, is
    escaped and encoded once)."""

    slots: tuple[tuple[str, Fill], ...]
    head: bytes
    gaps: tuple[tuple[int, bytes], ...]

    def fill(self, values: Mapping[str, Any]) -> bytes:
        """The page for ``values`` (a value per slot key), as one bytes body."""
        texts = [fill(values[key]) for key, fill in self.slots]
        parts = [self.head]
        for slot, after in self.gaps:
            parts.append(texts[slot])
            parts.append(after)
        return b"".join(parts)


def skeleton(render: Callable[[list[Slot]], str]) -> Skeleton:
    """Cut ``render(slots)``'s output at the slots it created in ``slots`` and printed."""
    slots: list[Slot] = []
    pieces = _MARKER.split(render(slots))
    statics = pieces[0::2]
    if any(_OPEN in s or _CLOSE in s for s in statics):
        raise ValueError("a slot's marker was changed by the template (sliced or filtered) instead of printed")
    printed = list(dict.fromkeys(int(index) for index in pieces[1::2]))
    position = {index: n for n, index in enumerate(printed)}
    gaps = tuple((position[int(index)], after.encode()) for index, after in zip(pieces[1::2], statics[1:], strict=True))
    return Skeleton(tuple((slots[i].key, slots[i].fill) for i in printed), statics[0].encode(), gaps)
