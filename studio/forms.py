from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm


class SignupForm(UserCreationForm):
    email = forms.EmailField(required=False, help_text="Optional; used only to reset a password.")

    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username", "email")


class TeamForm(forms.Form):
    name = forms.CharField(max_length=80)


class AddMemberForm(forms.Form):
    username = forms.CharField(max_length=150)


class TokenForm(forms.Form):
    name = forms.CharField(max_length=80, help_text="What the token is for, e.g. “laptop script”.")


class DeleteAccountForm(forms.Form):
    confirm = forms.CharField(help_text="Type your username to confirm.")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_confirm(self):
        value = self.cleaned_data["confirm"]
        if value != self.user.username:
            raise forms.ValidationError("That is not your username.")
        return value
