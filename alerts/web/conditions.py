"""``GET /api/conditions?q=``: condition suggestions for the sign-up form, from the learned vocabulary."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from alerts import text, vocabulary
from alerts.db import transaction
from alerts.web.deps import RuntimeDep
from alerts.web.validation import FieldIssue, ValidationProblem, problem_response

router = APIRouter(tags=["conditions"])
MAX_SUGGESTIONS = 10


class ConditionSuggestion(BaseModel):
    label: str = Field(description="A phrasing trials use; what to sign up with")
    key: str = Field(description="Its condition key (case, accents and punctuation removed)")
    concept: str | None = Field(description="The MeSH concept it resolves to (e.g. D007405), if any")
    term: str | None = Field(description="That concept's MeSH term, e.g. 'Intervertebral Disc Displacement'")
    trials: int = Field(description="Trials seen that are filed under the concept (or use the phrase)")
    trials_including_narrower: int = Field(description="... plus trials filed under a narrower concept")
    concepts: list[str] = Field(description="Every MeSH concept following this phrase means, main one first")
    name: str | None = Field(
        description="The plain name to show for it: the concepts' MeSH terms ('Depression or Depressive "
        "Disorder'); null for a phrase no trial has tied to a concept yet"
    )


@router.get(
    "/api/conditions",
    response_model=list[ConditionSuggestion],
    responses={422: {"model": ValidationProblem, "description": "q missing, too short or too long, or unreadable"}},
    summary="Suggest conditions to follow",
    description=(
        "Condition phrases the vocabulary knows whose phrasing starts with `q`, or has a word starting with "
        "it, one per meaning (or per phrase without one), most trials first; at most 10. Each says what "
        "following it means: show `name` and sign up with `label`."
    ),
)
def suggest_conditions(
    runtime: RuntimeDep,
    response: Response,
    q: Annotated[str, Query(min_length=2, max_length=300, description="What the user typed so far")],
) -> list[ConditionSuggestion] | JSONResponse:
    reason = text.problem(q)
    if reason:
        return problem_response([FieldIssue(loc=["query", "q"], msg=reason, type="value_error")])
    with transaction(runtime.engine) as session:
        items = vocabulary.suggest(session, q, limit=MAX_SUGGESTIONS)
    # The same query answers the same for a while: let browsers and proxies keep it for a few minutes.
    response.headers["Cache-Control"] = "public, max-age=300"
    return [ConditionSuggestion(**(asdict(item) | {"concepts": list(item.concepts)})) for item in items]
