"""Gallery reads: listings and search, always on top of `visible_images`."""

from django.contrib.postgres.search import SearchQuery
from django.db.models import QuerySet

from .models import Image, Visibility
from .services import visible_images

SORTS = {"new": "-created", "liked": "-like_count"}


def gallery_search(*, user, scope: str = "public", team=None, query: str = "",
                   model: str = "", sampler: str = "", seed: str = "",
                   sort: str = "new") -> QuerySet[Image]:
    """Images in a listing (`public`, `mine` or `team`), narrowed by a full-text query on the
    prompt and exact filters. Whatever the scope, only images `user` may see come back."""
    # Postgres cannot compare text holding a NUL character; no prompt or name holds one.
    query, model, sampler, seed = (v.replace("\x00", "") for v in (query, model, sampler, seed))
    images = visible_images(user)
    if scope == "mine":
        images = images.filter(owner=user)
    elif scope == "team":
        images = images.filter(visibility=Visibility.TEAM, team=team)
    else:
        images = images.filter(visibility=Visibility.PUBLIC, hidden=False)
    if query.strip():
        images = images.filter(search=SearchQuery(query, config="english", search_type="websearch"))
    if model:
        images = images.filter(model_name=model)
    if sampler:
        images = images.filter(sampler=sampler)
    if seed.strip().isdigit():
        images = images.filter(seed=int(seed))
    return images.order_by(SORTS.get(sort, "-created"), "-created")
