"""Gallery reads: listings and search, always on top of `visible_images`."""

from django.conf import settings
from django.contrib.postgres.search import SearchQuery
from django.db.models import QuerySet

from generation.engine import SEED_MAX

from .models import Image, Visibility
from .services import visible_images

SORTS = {"new": "-created", "liked": "-like_count"}
# Postgres nests each `-` (exclude) of a web search that follows another with no word between
# ("---cat", "- - cat", "(-(-cat") and fails past 32 levels: "tsquery stack too small".
MAX_EXCLUSIONS = 16


def search_errors(*, query: str = "", model: str = "", sampler: str = "",
                  seed: str = "") -> dict[str, str]:
    """What is wrong with a listing's search fields, by field name; empty when nothing is.

    Checked before any of it reaches Postgres: a seed must be decimal digits within 0..SEED_MAX
    (str.isdigit alone accepts "²", and a 5,000-digit number overflows), text is capped, and so
    are a web search's exclusions (see MAX_EXCLUSIONS)."""
    errors = {}
    limit = settings.STUDIO_MAX_TEXT_CHARS
    for field, value in (("q", query), ("model", model), ("sampler", sampler)):
        if len(value) > limit:
            errors[field] = f"At most {limit:,} characters."
    if "q" not in errors and _exclusions(query) > MAX_EXCLUSIONS:
        errors["q"] = f"At most {MAX_EXCLUSIONS} excluded words (-word)."
    seed = seed.strip()
    digits = seed.isascii() and seed.isdigit() and len(seed) <= len(str(SEED_MAX))
    if seed and not (digits and int(seed) <= SEED_MAX):
        errors["seed"] = f"A seed is a whole number from 0 to {SEED_MAX}."
    return errors


def _exclusions(query: str) -> int:
    """How many `-` of a web search start a term (are not inside a word like "sci-fi")."""
    pairs = zip(" " + query, query, strict=False)  # each character and the one before it
    return sum(char == "-" and not before.isalnum() for before, char in pairs)


def gallery_search(*, user, scope: str = "public", team=None, query: str = "",
                   model: str = "", sampler: str = "", seed: str = "",
                   sort: str = "new") -> QuerySet[Image]:
    """Images in a listing (`public`, `mine` or `team`), narrowed by a full-text query on the
    prompt and exact filters. Whatever the scope, only images `user` may see come back. The
    caller has refused what `search_errors` finds (every door answers that in its own shape)."""
    images = visible_images(user)
    # Postgres cannot compare text holding a NUL character; no prompt or name holds one.
    query, model, sampler = (v.replace("\x00", "") for v in (query, model, sampler))
    if scope == "mine":
        images = images.filter(owner=user)
    elif scope == "team":
        images = images.filter(visibility=Visibility.TEAM, team=team)
    else:
        images = images.public()
    if query.strip():
        images = images.filter(search=SearchQuery(query, config="english", search_type="websearch"))
    if model:
        images = images.filter(model_name=model)
    if sampler:
        images = images.filter(sampler=sampler)
    if seed.strip():
        images = images.filter(seed=int(seed))
    return images.order_by(SORTS.get(sort, "-created"), "-created")
