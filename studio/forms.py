from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import forms as auth_forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm

from . import login_throttle


class SignupForm(UserCreationForm):
    email = forms.EmailField(required=False, help_text="Optional; used only to reset a password.")

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "email")


class ThrottledLogin:
    """Refuses a log-in past the failure allowance (studio.login_throttle), even one with the
    right password: the one check every password log-in form shares. `retry_after` says for
    how many seconds, when it refused."""

    retry_after = 0

    def clean(self):
        username = self.cleaned_data.get("username")
        if username is None or not self.cleaned_data.get("password"):
            return super().clean()
        address = self.request.META.get("REMOTE_ADDR", "") if self.request else ""
        self.retry_after = login_throttle.login_attempt(username=username, address=address)
        if self.retry_after:
            raise forms.ValidationError(
                login_throttle.retry_message(self.retry_after), code="throttled"
            )
        try:
            return super().clean()
        finally:
            # The password was right (even for an inactive or non-staff account): not a guess.
            if self.user_cache is not None:
                login_throttle.login_succeeded(username=username, address=address)


class LoginForm(ThrottledLogin, AuthenticationForm):
    pass


class AdminLoginForm(ThrottledLogin, AdminAuthenticationForm):
    pass


class TeamForm(forms.Form):
    name = forms.CharField(max_length=80)


class AddMemberForm(forms.Form):
    username = forms.CharField(max_length=150)


class TokenForm(forms.Form):
    name = forms.CharField(max_length=80, help_text="What the token is for, e.g. “laptop script”.")


class DeleteAccountForm(forms.Form):
    password = forms.CharField(
        strip=False, help_text="Your password, to confirm that it is you.",
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )

    def __init__(self, *args, user, address: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        self.user, self.address = user, address

    def clean_password(self):
        password = self.cleaned_data["password"]
        confirm_password(user=self.user, password=password, address=self.address)
        return password


class PasswordChangeForm(auth_forms.PasswordChangeForm):
    """Django's, with the old password checked by confirm_password."""

    def __init__(self, user, *args, address: str = "", **kwargs):
        super().__init__(user, *args, **kwargs)
        self.address = address

    def clean_old_password(self):
        password = self.cleaned_data["old_password"]
        confirm_password(user=self.user, password=password, address=self.address)
        return password


def confirm_password(*, user, password: str, address: str) -> None:
    """A signed-in person's password, asked again before a change that needs it. A password
    check is a log-in door too: it counts against the same allowance, or a borrowed session
    could guess the password here."""
    username = user.get_username()
    wait = login_throttle.login_attempt(username=username, address=address)
    if wait:
        raise forms.ValidationError(login_throttle.retry_message(wait), code="throttled")
    if not user.check_password(password):
        raise forms.ValidationError("That is not your password.", code="password_incorrect")
    login_throttle.login_succeeded(username=username, address=address)
