"""Places and "Can I take part?" preferences on the web: city search, ``/api/preferences``, form helpers.

City search is a POST (``POST /api/places``, body ``{"q": "arnh"}``): what someone types about where they
live must not end up in a URL, and so in access logs and browser history. The gazetteer ships with the
package; nothing is fetched.

``GET`` / ``PUT /api/preferences`` read and replace a subscriber's preferences with their manage token as a
bearer token (the token from the manage link in every email; it is never put in these URLs).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import structlog
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import FormData

from alerts import places, preferences
from alerts.db import transaction
from alerts.models import Subscriber
from alerts.preferences import InvalidPreference, Preferences
from alerts.tokens import Purpose, TokenError
from alerts.web.deps import RuntimeDep

log = structlog.get_logger("alerts.web.places")

router = APIRouter(tags=["places"])
MAX_SUGGESTIONS = 10


class PlaceQuery(BaseModel):
    q: str = Field(min_length=2, max_length=200, description="What the person typed so far")


class PlaceSuggestion(BaseModel):
    id: int = Field(description="GeoNames id: what to send as city_id")
    label: str = Field(description="'Arnhem, The Netherlands'")
    timezone: str = Field(description="IANA time zone of the city")


class BadBody(BaseModel):
    detail: str = Field(description="why the body could not be read")


# FastAPI answers 400 itself for a body that is not JSON at all (before validation).
_BAD_BODY = "the body cannot be read (not UTF-8, not JSON)"


@router.post(
    "/api/places",
    response_model=list[PlaceSuggestion],
    summary="Suggest cities (offline gazetteer)",
    description="Cities whose name starts with `q` (a comma narrows by country or US state), most populous first.",
    responses={400: {"model": BadBody, "description": _BAD_BODY}},
)
def suggest_places(body: PlaceQuery) -> list[PlaceSuggestion]:
    found = places.gazetteer().search(body.q, limit=MAX_SUGGESTIONS)
    return [PlaceSuggestion(id=p.id, label=p.label, timezone=p.timezone) for p in found]


class PreferencesBody(BaseModel):
    """Optional, each of them; a field left out is cleared. Distance needs a city."""

    city_id: int | None = Field(default=None, description="GeoNames id from POST /api/places")
    city: str | None = Field(default=None, max_length=200, description="A city name, when no city_id is given")
    distance: int | Literal["anywhere"] | None = Field(
        default=None, description="25, 50, 100, 250 or 500 (in distance_unit); none or 'anywhere': no limit"
    )
    distance_unit: Literal["km", "mi"] = "km"
    recruiting_sites_only: bool = Field(default=False, description="Only trials with a recruiting site that close")
    age: int | None = Field(default=None, ge=0, le=preferences.MAX_AGE, description="Age in years")
    sex: Literal["female", "male", "FEMALE", "MALE"] | None = None

    def parse(self) -> Preferences:
        return preferences.parse(
            city=self.city_id,
            city_name=self.city,
            distance=self.distance,
            unit=self.distance_unit,
            recruiting_sites_only=self.recruiting_sites_only,
            age=self.age,
            sex=self.sex,
        )


class PreferencesView(BaseModel):
    city_id: int | None
    city: str | None
    timezone: str | None
    distance: int | None
    distance_unit: Literal["km", "mi"]
    recruiting_sites_only: bool
    age: int | None
    sex: Literal["female", "male"] | None

    @classmethod
    def of(cls, chosen: Preferences) -> PreferencesView:
        place = chosen.city
        return cls(
            city_id=chosen.city_id,
            city=place.label if place else None,
            timezone=place.timezone if place else None,
            distance=chosen.distance,
            distance_unit=chosen.unit,
            recruiting_sites_only=chosen.recruiting_sites_only,
            age=chosen.age,
            sex=chosen.sex.lower() if chosen.sex else None,  # type: ignore[arg-type]
        )


def _owner(runtime: Any, authorization: str | None) -> int | None:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token or len(token) > 400:
        return None
    try:
        return runtime.signer.verify(Purpose.MANAGE, token.strip(), None)  # type: ignore[no-any-return]
    except TokenError:
        return None


_UNAUTHORIZED = {"detail": "send the manage token from your alert emails as a Bearer token"}


@router.get(
    "/api/preferences",
    response_model=PreferencesView,
    summary="A subscriber's place, distance, age and sex",
    responses={401: {"description": "no valid manage token"}, 404: {"description": "erased"}},
)
def read_preferences(runtime: RuntimeDep, authorization: Annotated[str | None, Header()] = None) -> Any:
    subscriber_id = _owner(runtime, authorization)
    if subscriber_id is None:
        return JSONResponse(_UNAUTHORIZED, status_code=401, headers={"WWW-Authenticate": "Bearer"})
    with transaction(runtime.engine) as session:
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is None:
            return JSONResponse({"detail": "no such subscriber"}, status_code=404)
        return PreferencesView.of(preferences.of(subscriber))


@router.put(
    "/api/preferences",
    response_model=PreferencesView,
    summary="Replace a subscriber's place, distance, age and sex",
    responses={
        401: {"description": "no valid manage token"},
        400: {"model": BadBody, "description": _BAD_BODY},
        404: {"description": "erased"},
        422: {"description": "a value we cannot use, with the field and why"},
    },
)
def replace_preferences(
    body: PreferencesBody, runtime: RuntimeDep, authorization: Annotated[str | None, Header()] = None
) -> Any:
    subscriber_id = _owner(runtime, authorization)
    if subscriber_id is None:
        return JSONResponse(_UNAUTHORIZED, status_code=401, headers={"WWW-Authenticate": "Bearer"})
    try:
        chosen = body.parse()
    except InvalidPreference as exc:
        return JSONResponse({"detail": [{"loc": ["body", exc.field], "msg": str(exc)}]}, status_code=422)
    with transaction(runtime.engine) as session:
        if preferences.set_preferences(session, subscriber_id, chosen) is None:
            return JSONResponse({"detail": "no such subscriber"}, status_code=404)
    log.info("preferences.changed", subscriber_id=subscriber_id, via="api")  # never the values themselves
    return PreferencesView.of(chosen)


# --- the form fields (sign-up form and manage page) ----------------------------------------------------

FIELDS = ("city", "city_id", "distance", "recruiting_sites_only", "age", "sex")


def from_form(form: FormData) -> Preferences:
    """The optional fields of a form; raises InvalidPreference."""

    def text(name: str) -> str:
        value = form.get(name)
        return value.strip() if isinstance(value, str) else ""

    city_id, typed = text("city_id"), text("city")
    known = places.place(int(city_id)) if city_id.isdigit() else None
    if known is not None and typed and typed != known.label:
        city_id = ""  # typed over the picked city without the autocomplete: look the new name up
    return preferences.parse(
        city=city_id or None,
        city_name=typed or None,
        distance=text("distance") or None,
        recruiting_sites_only=text("recruiting_sites_only"),
        age=text("age") or None,
        sex=text("sex") or None,
    )


def form_context(request: Request, chosen: Preferences | None, form: FormData | None = None) -> dict[str, Any]:
    """What ``_preferences.html`` needs: the distance menu in the reader's unit, and what they chose or typed."""
    unit: places.Unit = (
        chosen.unit if chosen and chosen.distance else places.unit_for_locale(request.headers.get("accept-language"))
    )
    city = chosen.city if chosen else None
    typed = {name: str(form.get(name) or "") for name in FIELDS} if form is not None else {}
    return {
        "distances": places.choices(unit),
        "chosen": {
            "city": typed.get("city", city.label if city else ""),
            "city_id": typed.get("city_id", str(city.id) if city else ""),
            "distance": typed.get("distance", f"{chosen.distance}{chosen.unit}" if chosen and chosen.distance else ""),
            "recruiting_sites_only": bool(typed.get("recruiting_sites_only"))
            if form is not None
            else bool(chosen and chosen.recruiting_sites_only),
            "age": typed.get("age", str(chosen.age) if chosen and chosen.age is not None else ""),
            "sex": typed.get("sex", chosen.sex.lower() if chosen and chosen.sex else "").lower(),
        },
    }
