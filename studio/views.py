from django.contrib import messages
from django.contrib.auth import get_user_model, login, logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from . import health, services
from .forms import (
    AddMemberForm,
    DeleteAccountForm,
    LoginForm,
    PasswordChangeForm,
    SignupForm,
    TeamForm,
    TokenForm,
)
from .models import Membership

User = get_user_model()


def healthz(request):
    """For load balancers and the compose healthchecks: 200 when Postgres, Redis and the
    media storage all answer, else 503; the body names each one's state (studio/health.py)."""
    checks = health.report()
    return JsonResponse(checks, status=200 if health.healthy(checks) else 503)


def home(request):
    return render(request, "home.html")


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's, with the old password counted against the log-in allowance."""

    form_class = PasswordChangeForm

    def get_form_kwargs(self):
        return {**super().get_form_kwargs(), "address": self.request.META.get("REMOTE_ADDR", "")}


class LoginView(auth_views.LoginView):
    """Django's log-in page with the failure allowance: a refused try is a 429."""

    form_class = LoginForm

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.retry_after:
            response.status_code = 429
            response["Retry-After"] = str(form.retry_after)
        return response


def signup(request):
    if request.user.is_authenticated:
        return redirect("home")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, f"Welcome to Studio, {user.username}.")
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})


@login_required
def profile(request):
    context = {
        "tokens": request.user.api_tokens.all(),
        "token_form": TokenForm(),
        "new_token": request.session.pop("new_token", None),
        "teams": services.teams_for_user(request.user),
    }
    return render(request, "accounts/profile.html", context)


@login_required
@require_POST
def token_create(request):
    form = TokenForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give the token a name.")
        return redirect("profile")
    _token, raw = services.token_create(user=request.user, name=form.cleaned_data["name"])
    # Shown once on the next page, then gone: only its hash is stored.
    request.session["new_token"] = raw
    return redirect("profile")


@login_required
@require_POST
def token_revoke(request, token_id):
    if not services.token_revoke(user=request.user, token_id=token_id):
        raise Http404
    messages.success(request, "Token revoked.")
    return redirect("profile")


@login_required
def account_delete(request):
    form = DeleteAccountForm(request.POST or None, user=request.user,
                             address=request.META.get("REMOTE_ADDR", ""))
    if request.method == "POST" and form.is_valid():
        user = request.user
        logout(request)
        services.account_delete(user=user)
        messages.success(request, "Your account has been deleted.")
        return redirect("home")
    return render(request, "accounts/delete.html", {"form": form})


@login_required
def team_list(request):
    form = TeamForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        team = services.team_create(owner=request.user, name=form.cleaned_data["name"])
        messages.success(request, f"Team {team.name} created.")
        return redirect("team_detail", team_id=team.pk)
    teams = services.teams_for_user(request.user)
    return render(request, "teams/list.html", {"teams": teams, "form": form})


def _team_or_404(request, team_id):
    team = services.get_team_for_user(user=request.user, team_id=team_id)
    if team is None:
        raise Http404
    return team


@login_required
def team_detail(request, team_id):
    team = _team_or_404(request, team_id)
    context = {
        "team": team,
        "memberships": team.memberships.select_related("user"),
        "is_owner": team.role_of(request.user) == Membership.Role.OWNER,
        "form": AddMemberForm(),
    }
    return render(request, "teams/detail.html", context)


@login_required
@require_POST
def team_add_member(request, team_id):
    team = _team_or_404(request, team_id)
    form = AddMemberForm(request.POST)
    if form.is_valid():
        try:
            membership = services.team_add_member(
                team=team, actor=request.user, username=form.cleaned_data["username"]
            )
            messages.success(request, f"{membership.user.username} joined {team.name}.")
        except services.TeamError as exc:
            messages.error(request, str(exc))
    return redirect("team_detail", team_id=team.pk)


@login_required
@require_POST
def team_member_update(request, team_id, user_id):
    """Remove a member or change their role, as the form's `action` says."""
    team = _team_or_404(request, team_id)
    user = User.objects.filter(pk=user_id).first()
    if user is None:
        raise Http404
    action = request.POST.get("action")
    try:
        if action == "remove":
            services.team_remove_member(team=team, actor=request.user, user=user)
            messages.success(request, f"{user.username} was removed from {team.name}.")
        elif action in Membership.Role.values:
            services.team_set_role(team=team, actor=request.user, user=user, role=action)
            messages.success(request, f"{user.username} is now {action} of {team.name}.")
        else:
            messages.error(request, "Unknown action.")
    except services.TeamError as exc:
        messages.error(request, str(exc))
    return redirect("team_detail", team_id=team.pk)


@login_required
@require_POST
def team_leave(request, team_id):
    team = _team_or_404(request, team_id)
    try:
        services.team_leave(team=team, user=request.user)
    except services.TeamError as exc:
        messages.error(request, str(exc))
        return redirect("team_detail", team_id=team.pk)
    messages.success(request, f"You left {team.name}.")
    return redirect("team_list")
