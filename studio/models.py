"""Teams and API tokens. Users are Django's own `auth.User`."""

import hashlib
import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone


class Team(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=80)
    created = models.DateTimeField(default=timezone.now)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="teams"
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def role_of(self, user) -> str | None:
        """The user's role in this team, or None for a stranger."""
        membership = self.memberships.filter(user_id=user.pk).first()
        return membership.role if membership else None

    def owner_count(self) -> int:
        return self.memberships.filter(role=Membership.Role.OWNER).count()


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        MEMBER = "member", "Member"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    joined = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["team", "user"], name="one_membership_per_user")
        ]
        ordering = ["-role", "user__username"]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"


def hash_token(raw: str) -> str:
    # Tokens are 256 random bits, so a plain SHA-256 is enough: there is nothing to brute-force,
    # and a fast hash keeps per-request lookups cheap.
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiToken(models.Model):
    PREFIX = "st_"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=80)
    # The first characters, shown on the profile page so a user can tell tokens apart.
    hint = models.CharField(max_length=12)
    digest = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(default=timezone.now)
    last_used = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.name} ({self.hint}…)"
