from django.contrib import admin

from .forms import AdminLoginForm
from .models import ApiToken, Membership, Team

# The admin's log-in page is a second door for password guesses: the same allowance holds.
admin.site.login_form = AdminLoginForm


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "created"]
    search_fields = ["name", "memberships__user__username"]
    inlines = [MembershipInline]


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "hint", "created", "last_used"]
    search_fields = ["name", "user__username"]
    # The digest is never useful to a person; tokens are created by their owners.
    exclude = ["digest"]
    readonly_fields = ["user", "hint", "created", "last_used"]

    def has_add_permission(self, request):
        return False
