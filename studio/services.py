"""Account, team and token rules. Views, commands and the websocket auth call these."""

import secrets
import uuid

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from .models import ApiToken, Membership, Team, hash_token

User = get_user_model()


class TeamError(Exception):
    """A team change the rules forbid; its message is shown to the user as is."""


def user_lock(user) -> None:
    """Hold the user's row until the caller's transaction ends, so what one user does at
    once (submitting jobs, creating collections) takes turns: a per-user cap counted and then
    inserted cannot be passed by concurrent requests. FOR NO KEY UPDATE: rows that only refer
    to the user (the worker storing their images, their likes) are not held up by it."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("user_lock needs a transaction to hold the lock in")
    User.objects.select_for_update(no_key=True).filter(pk=user.pk).values_list("pk").first()


# --- Teams --------------------------------------------------------------------------------


def teams_for_user(user) -> "list[Team]":
    return list(Team.objects.filter(memberships__user=user).order_by("name"))


def as_uuid(value) -> uuid.UUID | None:
    """An object id as a UUID, or None for anything else: ids also arrive in form fields,
    where a doctored one must be a 404 or a field error, not a database error."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def get_team_for_user(*, user, team_id) -> Team | None:
    """The one door to a team: None (a 404 for views) unless the user is a member, and for an
    id that is not a UUID at all."""
    team_id = as_uuid(team_id)
    if team_id is None:
        return None
    return Team.objects.filter(pk=team_id, memberships__user=user).first()


@transaction.atomic
def team_create(*, owner, name: str) -> Team:
    team = Team.objects.create(name=name.strip())
    Membership.objects.create(team=team, user=owner, role=Membership.Role.OWNER)
    return team


def team_add_member(*, team: Team, actor, username: str, role: str = Membership.Role.MEMBER):
    _require_owner(team, actor)
    user = User.objects.filter(username__iexact=username.strip(), is_active=True).first()
    if user is None:
        raise TeamError(f"There is no user called “{username.strip()}”.")
    membership, created = Membership.objects.get_or_create(
        team=team, user=user, defaults={"role": role}
    )
    if not created:
        raise TeamError(f"{user.username} is already in {team.name}.")
    return membership


@transaction.atomic
def team_remove_member(*, team: Team, actor, user) -> None:
    _require_owner(team, actor)
    _remove(team, user)


@transaction.atomic
def team_leave(*, team: Team, user) -> None:
    _remove(team, user)


def _remove(team: Team, user) -> None:
    # Lock the team's memberships so two owners leaving at once cannot both pass the check.
    memberships = list(Membership.objects.select_for_update().filter(team=team))
    membership = next((m for m in memberships if m.user_id == user.pk), None)
    if membership is None:
        raise TeamError(f"{user.username} is not in {team.name}.")
    owners = [m for m in memberships if m.role == Membership.Role.OWNER]
    if membership.role == Membership.Role.OWNER and len(owners) == 1 and len(memberships) > 1:
        raise TeamError("A team needs an owner: make someone else an owner first.")
    membership.delete()
    if len(memberships) == 1:
        team.delete()


def team_set_role(*, team: Team, actor, user, role: str) -> None:
    _require_owner(team, actor)
    if role not in Membership.Role.values:
        raise TeamError(f"Unknown role “{role}”.")
    membership = Membership.objects.filter(team=team, user=user).first()
    if membership is None:
        raise TeamError(f"{user.username} is not in {team.name}.")
    demoting = role == Membership.Role.MEMBER and membership.role == Membership.Role.OWNER
    if demoting and team.owner_count() == 1:
        raise TeamError("A team needs an owner: make someone else an owner first.")
    membership.role = role
    membership.save(update_fields=["role"])


def _require_owner(team: Team, actor) -> None:
    if team.role_of(actor) != Membership.Role.OWNER:
        raise TeamError("Only the team's owners can change its members.")


# --- API tokens ---------------------------------------------------------------------------


def token_create(*, user, name: str) -> tuple[ApiToken, str]:
    """Create a token and return it with its raw value, which is shown once and never stored."""
    raw = ApiToken.PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        user=user, name=name.strip() or "token", hint=raw[:10], digest=hash_token(raw)
    )
    return token, raw


def token_revoke(*, user, token_id) -> bool:
    deleted, _ = ApiToken.objects.filter(pk=token_id, user=user).delete()
    return deleted > 0


def token_authenticate(raw: str):
    """The active user a raw token belongs to, or None."""
    if not raw or not raw.startswith(ApiToken.PREFIX):
        return None
    token = ApiToken.objects.select_related("user").filter(digest=hash_token(raw)).first()
    if token is None or not token.user.is_active:
        return None
    # Bounded write rate: last_used is for the profile page, a minute of slack is fine.
    now = timezone.now()
    if token.last_used is None or (now - token.last_used).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used=now)
    return token.user


def bearer_token(authorization: str) -> str:
    """The token in an `Authorization: Bearer <token>` header value, or ''."""
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


# --- Accounts -----------------------------------------------------------------------------


@transaction.atomic
def account_delete(*, user) -> None:
    """Delete a user; teams they alone owned pass to their oldest other member, or go.
    Everything of theirs goes with the row, files too, once the deletion commits: each app
    deletes the files of its rows as they go (generation's outputs and input images,
    the gallery's imports), so this module needs to know none of them."""
    for membership in Membership.objects.select_for_update().filter(user=user):
        team = membership.team
        others = team.memberships.exclude(user=user).order_by("joined")
        if membership.role == Membership.Role.OWNER and team.owner_count() == 1:
            heir = others.first()
            if heir is None:
                team.delete()
                continue
            heir.role = Membership.Role.OWNER
            heir.save(update_fields=["role"])
    user.delete()
