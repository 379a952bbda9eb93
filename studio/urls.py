"""The root URLconf: the one place that mounts every app (docs/architecture.md §2)."""

from django.contrib import admin
from django.urls import include, path

from gallery.api import router as gallery_api
from generation import compat_a1111, compat_openai
from generation.api import router as generation_api

from . import views
from .api import api

api.add_router("", generation_api)
api.add_router("", gallery_api)

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("signup/", views.signup, name="signup"),
    # Before Django's own, which it replaces: log-in counts failures (studio.login_throttle).
    path("accounts/login/", views.LoginView.as_view(), name="login"),
    path("accounts/password_change/", views.PasswordChangeView.as_view(),
         name="password_change"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("profile/", views.profile, name="profile"),
    path("profile/tokens/", views.token_create, name="token_create"),
    path("profile/tokens/<uuid:token_id>/revoke/", views.token_revoke, name="token_revoke"),
    path("profile/delete/", views.account_delete, name="account_delete"),
    path("teams/", views.team_list, name="team_list"),
    path("teams/<uuid:team_id>/", views.team_detail, name="team_detail"),
    path("teams/<uuid:team_id>/members/", views.team_add_member, name="team_add_member"),
    path(
        "teams/<uuid:team_id>/members/<int:user_id>/",
        views.team_member_update,
        name="team_member_update",
    ),
    path("teams/<uuid:team_id>/leave/", views.team_leave, name="team_leave"),
    path("", include("generation.urls")),
    path("", include("gallery.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    path("v1/", compat_openai.api.urls),
    path("sdapi/v1/", compat_a1111.api.urls),
]
