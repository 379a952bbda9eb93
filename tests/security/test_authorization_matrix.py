"""The authorization matrix: (actor, object, door) -> what the door answers.

The rule: a viewer learns nothing about an image they may not see, by any door, and a
hidden image is served to nobody but its owner and staff; the input image and mask it was
made from go with it, to whoever may see it and nobody else. An image alice keeps private
is alice's and staff's; a team image is also bob's; a public one is everyone's until staff
hide it. Publishing one image of a batch publishes that image alone: its sibling stays private,
and so do the frames of the batch's denoising. Jobs, imports and reproductions are their
owner's and staff's; collections follow the images' visibility rule but never widen it.

Each test is a row of the table: one object through one door, every actor's answer against
the expected one. Outcomes: an HTTP status ("200", "404", "401", "400"), "login" (a redirect
to log in), and for listings "shown" or "absent"; for changes, "changed" or "kept" (what the
database says after the request, whatever the page answered). Websockets, signed links and
the compatible APIs' other doors are in test_side_doors.py.
"""

import pytest
from django.db import transaction
from django.urls import reverse

from gallery.models import Collection, PngImport
from studio.api import signed_url

from .conftest import ACTORS, BATCH_FRAME

pytestmark = pytest.mark.django_db

SEEN_BY = {
    "private": {"alice", "admin"},
    "team": {"alice", "bob", "admin"},
    "public": set(ACTORS),
    "hidden": {"alice", "admin"},
    "batch_public": set(ACTORS),
    "sibling": {"alice", "admin"},
}
IN_PUBLIC_GALLERY = {"public", "batch_public"}
OWNER_OR_STAFF = {"alice", "admin"}
WORDS = {"private": "lemon", "team": "melon", "public": "apple", "hidden": "cherry",
         "batch_public": "grape", "sibling": "grape"}


def outcome(response) -> str:
    location = response.get("Location", "")
    if response.status_code == 302 and "/accounts/login/" in location:
        return "login"
    return str(response.status_code)


def listed(response, needle) -> str:
    if response.status_code != 200:
        return outcome(response)
    return "shown" if str(needle) in response.content.decode() else "absent"


# --- Images -------------------------------------------------------------------------------


def api_file_path(image) -> str:
    return reverse("api:image_file", args=[image.pk])


IMAGE_DOORS = {
    "page": lambda w, a, i: outcome(w.client(a).get(i.get_absolute_url())),
    "file": lambda w, a, i: outcome(w.client(a).get(i.get_file_url())),
    "api_detail": lambda w, a, i: outcome(w.api(a).get(f"/api/v1/images/{i.pk}")),
    "api_file": lambda w, a, i: outcome(w.api(a).get(api_file_path(i))),
    "api_file_by_session": lambda w, a, i: outcome(w.client(a).get(api_file_path(i))),
    # The input image and mask it was made from: seen with the image, by nobody else.
    "input": lambda w, a, i: outcome(w.client(a).get(reverse("image_input", args=[i.pk]))),
    "mask": lambda w, a, i: outcome(w.client(a).get(reverse("image_mask", args=[i.pk]))),
    "api_input": lambda w, a, i: outcome(w.api(a).get(reverse("api:image_input", args=[i.pk]))),
    "api_mask": lambda w, a, i: outcome(w.api(a).get(reverse("api:image_mask", args=[i.pk]))),
    # The link alice's OpenAI answer would give her, in the hands of each actor.
    "signed_link": lambda w, a, i: outcome(
        w.client(a).get(signed_url(api_file_path(i), user=w.users["alice"]))),
    "reproduce": lambda w, a, i: outcome(
        w.client(a).post(reverse("image_reproduce", args=[i.pk]))),
    "api_change": lambda w, a, i: outcome(w.api(a).patch(
        f"/api/v1/images/{i.pk}", {"visibility": "public"}, content_type="application/json")),
}


def image_expected(actor: str, kind: str, door: str) -> str:
    seen = actor in SEEN_BY[kind]
    if door == "signed_link":
        # The link stands for alice, whoever holds it; a hidden image it opens only for its
        # owner and staff, through their own login.
        if kind == "hidden":
            return "200" if actor in ("alice", "admin") else "404"
        return "200"
    if door.startswith("api"):
        if actor == "anonymous":
            return "401"
        if door == "api_change" and seen:
            return "200" if actor == "alice" else "403"
    elif door == "reproduce":
        if actor == "anonymous":
            return "login"
        return "302" if seen else "404"
    return "200" if seen else "404"


def row(expected, *key) -> dict:
    """One row of a table: {actor: expected outcome}."""
    return {actor: expected(actor, *key) for actor in ACTORS}


def answers(door, world, *args) -> dict:
    """{actor: what the door answered}, each actor's request undone before the next: what
    alice deletes is still there for bob to try."""
    answered = {}
    for actor in ACTORS:
        with transaction.atomic():
            answered[actor] = door(world, actor, *args)
            transaction.set_rollback(True)
    return answered


@pytest.mark.parametrize("door", IMAGE_DOORS)
@pytest.mark.parametrize("kind", SEEN_BY)
def test_each_door_answers_an_image_by_who_may_see_it(world, kind, door):
    image = world.images[kind]
    answered = answers(IMAGE_DOORS[door], world, image)
    assert answered == row(image_expected, kind, door)


def search(world, actor, path, **params):
    return world.client(actor).get(path, params)


ANY_WORD = " or ".join(sorted(set(WORDS.values())))
# Listings: one request per actor, read for every image.
LISTINGS = {
    "gallery_search": lambda w, a: search(w, a, "/gallery/", q=ANY_WORD),
    "gallery_mine": lambda w, a: search(w, a, "/gallery/mine/"),
    "gallery_team": lambda w, a: search(w, a, f"/gallery/teams/{w.team.pk}/"),
    "api_public": lambda w, a: w.api(a).get("/api/v1/images", {"q": ANY_WORD}),
    "api_mine": lambda w, a: w.api(a).get("/api/v1/images", {"scope": "mine", "limit": 100}),
    "api_team": lambda w, a: w.api(a).get("/api/v1/images", {"scope": "team",
                                                             "team": w.team.pk}),
    "public_collection": lambda w, a: w.client(a).get(
        w.collections["public"].get_absolute_url()),
}
# Searches by an image's own seed, which a stranger could guess.
SEED_SEARCHES = {
    "gallery_seed": lambda w, a, i: search(w, a, "/gallery/", seed=i.seed),
    "api_seed": lambda w, a, i: w.api(a).get("/api/v1/images", {"seed": i.seed}),
}


def listing_expected(actor: str, kind: str, door: str) -> str:
    if door.startswith("api") and actor == "anonymous":
        return "401"
    if door in ("gallery_mine", "gallery_team") and actor == "anonymous":
        return "login"
    if door in ("gallery_search", "gallery_seed", "api_public", "api_seed"):
        return "shown" if kind in IN_PUBLIC_GALLERY else "absent"
    if door in ("gallery_mine", "api_mine"):
        return "shown" if actor == "alice" else "absent"
    if door in ("gallery_team", "api_team"):
        if actor not in ("alice", "bob"):  # staff see every image, but join no team
            return "400" if door == "api_team" else "404"
        return "shown" if kind == "team" else "absent"
    return "shown" if actor in SEEN_BY[kind] else "absent"


@pytest.mark.parametrize("door", LISTINGS)
def test_listings_and_collections_show_only_what_the_viewer_may_see(world, door):
    pages = {actor: LISTINGS[door](world, actor) for actor in ACTORS}
    for kind, image in world.images.items():
        answered = {actor: listed(page, image.pk) for actor, page in pages.items()}
        assert (kind, answered) == (kind, row(listing_expected, kind, door))


@pytest.mark.parametrize("door", SEED_SEARCHES)
@pytest.mark.parametrize("kind", SEEN_BY)
def test_a_search_by_seed_finds_only_what_the_viewer_may_see(world, kind, door):
    image = world.images[kind]
    answered = {actor: listed(SEED_SEARCHES[door](world, actor, image), image.pk)
                for actor in ACTORS}
    assert answered == row(listing_expected, kind, door)


@pytest.mark.parametrize("actor", ["bob", "carol", "anonymous"])
def test_a_published_image_shows_none_of_its_batchs_frames(world, actor):
    """Its job kept the batch's frames side by side: the sibling's pixels are in them."""
    page = world.client(actor).get(world.images["batch_public"].get_absolute_url())
    assert page.status_code == 200
    assert BATCH_FRAME not in page.content.decode()


# --- Jobs, imports, reproductions, collections --------------------------------------------


def job_list(w, a, job):
    response = w.api(a).get("/api/v1/jobs", {"limit": 100})
    return listed(response, job.pk)


def progress(w, a, job):
    response = w.api(a).get("/sdapi/v1/progress")
    if response.status_code != 200:
        return outcome(response)
    return "shown" if response.json()["state"]["job"] == str(job.pk) else "absent"


JOB_DOORS = {
    "state": lambda w, a, j: outcome(w.client(a).get(reverse("job_detail", args=[j.pk]))),
    "cancel": lambda w, a, j: outcome(w.client(a).post(reverse("job_cancel", args=[j.pk]))),
    "api_state": lambda w, a, j: outcome(w.api(a).get(f"/api/v1/jobs/{j.pk}")),
    "api_cancel": lambda w, a, j: outcome(w.api(a).post(f"/api/v1/jobs/{j.pk}/cancel")),
    "generate_page": lambda w, a, j: listed(w.client(a).get(reverse("generate")), j.pk),
    "api_list": job_list,
    "a1111_progress": progress,
}


def job_expected(actor: str, job: str, door: str) -> str:
    if actor == "anonymous":
        return "401" if door.startswith(("api", "a1111")) else "login"
    if door in ("generate_page", "api_list", "a1111_progress"):
        return "shown" if actor == "alice" else "absent"
    if door in ("cancel", "api_cancel"):  # staff look, only the owner cancels
        return "200" if actor == "alice" else "404"
    return "200" if actor in OWNER_OR_STAFF else "404"


@pytest.mark.parametrize(("job", "door"), [
    (job, door) for door in JOB_DOORS for job in ("batch", "running")
    if not (door == "a1111_progress" and job == "batch")])  # it shows the running job
def test_a_job_is_its_owners_and_staffs(world, job, door):
    answered = answers(JOB_DOORS[door], world, world.jobs[job])
    assert answered == row(job_expected, job, door)


def changed_or_kept(response, still_there) -> str:
    """For a change: "login"/"404"/"500" as answered, else what the database says."""
    status = outcome(response)
    if status in ("login", "404") or response.status_code >= 500:
        return status
    return "kept" if still_there() else "changed"


def import_delete(w, a, imported):
    response = w.client(a).post(reverse("import_delete", args=[imported.pk]))
    return changed_or_kept(response, PngImport.objects.filter(pk=imported.pk).exists)


IMPORT_DOORS = {
    "page": lambda w, a, m: outcome(w.client(a).get(m.get_absolute_url())),
    "file": lambda w, a, m: outcome(w.client(a).get(m.get_file_url())),
    "reproduce": lambda w, a, m: outcome(
        w.client(a).post(reverse("import_reproduce", args=[m.pk]))),
    "delete": import_delete,
    "upload_page": lambda w, a, m: listed(w.client(a).get(reverse("import_upload")), m.pk),
}


def import_expected(actor: str, door: str) -> str:
    if actor == "anonymous":
        return "login"
    if door == "upload_page":
        return "shown" if actor == "alice" else "absent"
    if door == "delete" and actor in OWNER_OR_STAFF:
        return "changed" if actor == "alice" else "kept"  # staff may look, not delete
    if door == "reproduce" and actor in OWNER_OR_STAFF:
        return "302"
    return "200" if actor in OWNER_OR_STAFF else "404"


@pytest.mark.parametrize("door", IMPORT_DOORS)
def test_an_import_is_its_owners_and_staffs(world, door):
    answered = answers(IMPORT_DOORS[door], world, world.imported)
    assert answered == row(import_expected, door)


REPRODUCTION_DOORS = {
    "state": lambda w, a, r: outcome(w.client(a).get(
        reverse("reproduction_state", args=[r.pk]))),
    "image_page": lambda w, a, r: listed(w.client(a).get(r.image.get_absolute_url()), r.pk),
}


def reproduction_expected(actor: str, door: str) -> str:
    if door == "image_page":
        return "shown" if actor == "alice" else "absent"
    if actor == "anonymous":
        return "login"
    return "200" if actor in OWNER_OR_STAFF else "404"


@pytest.mark.parametrize("door", REPRODUCTION_DOORS)
def test_a_reproduction_is_shown_to_who_asked_for_it(world, door):
    answered = answers(REPRODUCTION_DOORS[door], world, world.reproduction)
    assert answered == row(reproduction_expected, door)


COLLECTION_SEEN_BY = {"private": {"alice", "admin"}, "team": {"alice", "bob", "admin"},
                      "public": set(ACTORS)}


def collection_change(name: str, data):
    def door(w, a, collection):
        before = (collection.visibility, collection.images.count())
        response = w.client(a).post(reverse(name, args=[collection.pk]), data(w, collection))
        current = Collection.objects.filter(pk=collection.pk).first()

        def unchanged():
            return current is not None and (current.visibility,
                                            current.images.count()) == before

        return changed_or_kept(response, unchanged)

    return door


COLLECTION_DOORS = {
    "page": lambda w, a, c: outcome(w.client(a).get(c.get_absolute_url())),
    "list": lambda w, a, c: listed(w.client(a).get(reverse("collection_list")), c.pk),
    "remove": collection_change("collection_remove",
                                lambda w, c: {"image": w.images["public"].pk}),
    "visibility": collection_change(
        "collection_visibility",
        lambda w, c: {"visibility": "private" if c.visibility == "public" else "public"}),
    "delete": collection_change("collection_delete", lambda w, c: {}),
}


def collection_expected(actor: str, kind: str, door: str) -> str:
    seen = actor in COLLECTION_SEEN_BY[kind]
    if actor == "anonymous" and door != "page":
        return "login"
    if door == "page":
        return "200" if seen else "404"
    if door == "list":
        return "shown" if seen else "absent"
    if not seen:
        return "404"
    return "changed" if actor == "alice" else "kept"


@pytest.mark.parametrize("door", COLLECTION_DOORS)
@pytest.mark.parametrize("kind", COLLECTION_SEEN_BY)
def test_a_collection_is_seen_by_its_visibility_and_changed_by_its_owner(world, kind, door):
    collection = world.collections[kind]
    answered = answers(COLLECTION_DOORS[door], world, collection)
    assert answered == row(collection_expected, kind, door)
