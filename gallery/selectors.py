"""Gallery reads: listings and search, always on top of `visible_images`, and their pages."""

import base64
import binascii
import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib.postgres.search import SearchQuery
from django.db.models import F, Field, Func, QuerySet, Value
from django.db.models.lookups import GreaterThan, LessThan

from generation.engine import SEED_MAX

from .models import Image, Visibility
from .services import visible_images

# Each listing's order, all descending, ending in the primary key so that it is total: a
# page boundary is then one row, and the next page starts right after it (keyset paging).
# Image.Meta.indexes holds an index per listing in this order.
SORTS = {"new": ("created", "pk"), "liked": ("like_count", "created", "pk"),
         # A collection's images, newest first, by the date its index keeps beside each
         # (collections.collection_images annotates it): not a sort a listing offers.
         "collection": ("in_collection", "pk")}
LISTING_SORTS = ("new", "liked")  # what the gallery's listings take from a query string
PAGE_SIZE = 24  # a listing's page on the site
# The API counts a listing up to here: beyond it, counting costs a row read per image.
COUNT_MAX = 1000
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
        # What visible_images lets this user see of it: members see what is not hidden,
        # the owner and staff their hidden images too, as in every listing.
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
    return listed(images).order_by(*(f"-{key}" for key in sort_keys(sort)))


def count_capped(images: QuerySet[Image]) -> int:
    """How many images a listing holds, counted up to COUNT_MAX (which then means "at
    least"): an exact count reads every matching row, 50,000 of them in a public gallery of
    100,000 images."""
    # Unordered: in the listing's order, a rare word's few matches are sought along the
    # whole date index instead of found in the search index.
    return images.order_by()[:COUNT_MAX].count()


def listed(images: QuerySet[Image]) -> QuerySet[Image]:
    """`images` without what no listing shows: the recipe (up to 15 kB of JSON an image) and
    the search vector."""
    return images.defer("search", "output__recipe")


def sort_keys(sort: str) -> tuple[str, ...]:
    return SORTS.get(sort, SORTS["new"])


class _Row(Func):
    """A row constructor, `(a, b, c)`: Postgres compares rows element by element, and reads a
    comparison of an index's columns as a range of that index."""

    function = ""
    output_field = Field()


@dataclass(frozen=True)
class Window:
    """One page of a listing: its images, and the cursors of the pages on either side (None
    at either end)."""

    items: list[Image]
    newer: str | None
    older: str | None

    def __iter__(self):
        return iter(self.items)


def listing_window(images: QuerySet[Image], *, sort: str = "new", after: str = "",
                   before: str = "", size: int) -> Window:
    """The page of `images` (ordered by `sort`) after the cursor `after` (the older pages) or
    before `before` (the newer ones); the first page without either, or with a cursor that
    is not one. Any depth costs the same: one index range of `size` + 1 rows, no OFFSET and
    no COUNT (docs/gallery.md, "Listings").

    1. Decode the cursor: the sort values of the row the page starts next to.
    2. Read `size` + 1 rows beyond it, in the listing's order (before: in reverse, then turned
       round); the extra row says whether there is a page beyond.
    3. A page before the newest that comes back short is the newest page itself."""
    keys = sort_keys(sort)
    images = images.order_by(*(f"-{key}" for key in keys))
    columns = _Row(*(F(key) for key in keys))
    if (cursor := decode_cursor(before, sort)) is not None:
        rows = list(images.filter(GreaterThan(columns, _values(cursor))).reverse()[:size + 1])
        if len(rows) > size:
            items = rows[:size][::-1]
            return Window(items, newer=cursor_of(items[0], sort), older=cursor_of(items[-1], sort))
        after = ""
    cursor = decode_cursor(after, sort)
    if cursor is not None:
        images = images.filter(LessThan(columns, _values(cursor)))
    rows = list(images[:size + 1])
    items = rows[:size]
    newer = cursor_of(items[0], sort) if cursor is not None and items else None
    older = cursor_of(items[-1], sort) if len(rows) > size else None
    return Window(items, newer=newer, older=older)


def _values(cursor: tuple) -> _Row:
    return _Row(*(Value(value) for value in cursor))


def cursor_of(image: Image, sort: str = "new") -> str:
    """The cursor of the page boundary at `image` in the listing sorted by `sort`: its sort
    values, as opaque text for a query string."""
    values = [getattr(image, key) for key in sort_keys(sort)]
    text = json.dumps([v.isoformat() if isinstance(v, datetime) else str(v) if
                       isinstance(v, uuid.UUID) else v for v in values])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


CURSOR_MAX = 200  # characters; a real one has about 100
CURSOR_TYPES = {"created": datetime.fromisoformat, "in_collection": datetime.fromisoformat,
                "pk": uuid.UUID, "like_count": int}


def _not_a_number(name: str):
    raise ValueError(f"{name} is not a cursor value")


def decode_cursor(cursor: str, sort: str = "new") -> tuple | None:
    """The sort values a cursor of the listing sorted by `sort` holds, each of its key's
    type; None for anything else (a cursor arrives in a query string, from anyone)."""
    keys = sort_keys(sort)
    if not cursor or len(cursor) > CURSOR_MAX:
        return None
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)),
                            parse_constant=_not_a_number)
        if not isinstance(values, list) or len(values) != len(keys):
            return None
        if any(type(v) is not int for k, v in zip(keys, values, strict=True) if k == "like_count"):
            return None
        typed = tuple(CURSOR_TYPES[key](value) for key, value in zip(keys, values, strict=True))
    except (ValueError, TypeError, AttributeError, OverflowError, binascii.Error):
        return None
    aware = all(v.tzinfo is not None for v in typed if isinstance(v, datetime))
    in_range = all(0 <= v < 2**31 for v in typed if isinstance(v, int))
    return typed if aware and in_range else None
