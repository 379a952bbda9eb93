"""Collections: named sets of images with a visibility of their own.

A collection never widens who sees an image: its page shows only the images the viewer may
see anyway, so a public collection of private or hidden images shows none of them."""


from django.conf import settings
from django.db import transaction
from django.db.models import F, QuerySet

from studio.services import as_uuid

from .limits import check_cap, clean_text
from .models import Collection, CollectionItem, Image, Visibility
from .selectors import listed
from .services import GalleryError, resolve_visibility, visible_images

NAME_MAX = Collection._meta.get_field("name").max_length


def visible_collections(user) -> QuerySet[Collection]:
    """The collections `user` may see: the images' rule, without hiding (moderators hide
    images, not collections)."""
    return Collection.objects.select_related("owner", "team").visible_to(user)


def get_collection_for_user(*, user, collection_id) -> Collection | None:
    """The one door to a collection: None (a 404) for what the user may not see, and for an
    id that is not a UUID (ids also arrive in form fields)."""
    collection_id = as_uuid(collection_id)
    if collection_id is None:
        return None
    return visible_collections(user).filter(pk=collection_id).first()


def collection_images(*, collection: Collection, user) -> QuerySet[Image]:
    """The collection's images that `user` may see, for a listing sorted "collection"
    (selectors.listing_window orders and pages them by the date kept beside each image in
    the collection, which its index holds in that order)."""
    return listed(visible_images(user).filter(collection_items__collection=collection)
                  .annotate(in_collection=F("collection_items__created")))


def collections_owned(user) -> QuerySet[Collection]:
    if not getattr(user, "is_authenticated", False):
        return Collection.objects.none()
    return Collection.objects.filter(owner=user).select_related("team")


def collection_create(*, owner, name: str, visibility: str = Visibility.PRIVATE,
                      team_id=None) -> Collection:
    """A new collection of `owner`'s, within their cap on collections."""
    name = clean_text(name, field="name", max_chars=NAME_MAX)
    if not name:
        raise GalleryError("Give the collection a name.")
    visibility, team = resolve_visibility(actor=owner, visibility=visibility, team_id=team_id)
    cap = settings.STUDIO_MAX_COLLECTIONS_PER_USER
    with transaction.atomic():
        check_cap(user=owner, owned=Collection.objects.filter(owner=owner), cap=cap, message=(
            f"You have {cap} collections, the most one person can keep: "
            "delete one to make another."))
        return Collection.objects.create(owner=owner, name=name, visibility=visibility,
                                         team=team)


def _require_owner(collection: Collection, actor) -> None:
    if collection.owner_id != actor.pk:
        raise GalleryError("Only the collection's owner can change it.")


def collection_set_visibility(*, collection: Collection, actor, visibility: str,
                              team_id=None) -> None:
    _require_owner(collection, actor)
    collection.visibility, collection.team = resolve_visibility(
        actor=actor, visibility=visibility, team_id=team_id
    )
    collection.save(update_fields=["visibility", "team"])


def collection_add_image(*, collection: Collection, actor, image: Image) -> None:
    """Add an image the actor can see (the caller got it through get_image_for_user)."""
    _require_owner(collection, actor)
    CollectionItem.collect(collection, [image])


def collection_remove_image(*, collection: Collection, actor, image_id) -> None:
    _require_owner(collection, actor)
    image_id = as_uuid(image_id)
    if image_id is None:  # a tampered form field
        raise GalleryError("Choose an image of the collection to remove.")
    collection.images.remove(*collection.images.filter(pk=image_id))


def collection_delete(*, collection: Collection, actor) -> None:
    """The collection goes; its images stay where they are."""
    _require_owner(collection, actor)
    collection.delete()
