"""The generate page's form, drawn from the request's declaration (generation/job_request.py):
each field's label, help, and min, max and step from its limits, the sizes the chosen
model's. It only draws: generate.js posts it to views.job_submit, which parses it with
job_request.parse like every other door."""

from collections.abc import Mapping
from functools import cached_property

from django import forms

from . import engine, recipes
from .job_request import DEFAULT_STRENGTH, FIELDS, ImageData, LoraChoice, RequestField, lora_names

# Drawn as a slider with its value shown beside it (request_field.html), not a number box.
SLIDERS = {"strength"}
# Images the page sends: input_image.js reads the chosen file and posts it as a data URL.
IMAGE_TYPES = "image/png,image/jpeg,image/webp"


class RangeInput(forms.NumberInput):
    input_type = "range"


def form_field(field: RequestField, model: engine.ModelSpec | None) -> forms.Field:
    """A Django field that draws `field` (its checks are the engine's, not Django's)."""
    common = {"label": field.label, "help_text": field.help, "required": field.required}
    attrs = {"placeholder": field.placeholder} if field.placeholder else {}
    if issubclass(field.kind, ImageData):
        # Out of sight and out of the tab order: the page's own button opens it.
        attrs = {"accept": IMAGE_TYPES, "class": "sr-only", "tabindex": "-1",
                 "aria-label": field.label}
        return forms.FileField(widget=forms.FileInput(attrs), **common)
    if field.kind is bool:  # generate.js posts true or false: an unticked box sends nothing
        return forms.BooleanField(widget=forms.CheckboxInput({"data-bool": ""}),
                                  **{**common, "required": False})
    if field.kind is LoraChoice:  # typed as text; the page's picker (generate.js) fills it in
        return forms.CharField(widget=forms.TextInput(attrs), **common)
    if field.choices is not None:
        return forms.ChoiceField(choices=[(c, c) for c in field.choices()], **common)
    if field.kind is str:
        widget = forms.Textarea({"rows": field.lines, **attrs}) if field.lines else None
        return forms.CharField(widget=widget or forms.TextInput(attrs), **common)
    low, high = field.bounds(model)
    number = forms.IntegerField if field.kind is int else forms.FloatField
    widget = RangeInput if field.name in SLIDERS else forms.NumberInput
    return number(min_value=low, max_value=high, step_size=field.step, widget=widget(attrs),
                  **common)


class GenerateForm(forms.Form):
    def __init__(self, *, initial: dict, model: engine.ModelSpec | None):
        super().__init__(initial=initial, label_suffix="")
        for field in FIELDS:
            self.fields[field.name] = form_field(field, model)
        if self.initial.get("strength") is None:  # what an input image gets when unset
            self.initial["strength"] = DEFAULT_STRENGTH

    @cached_property
    def lora_names(self) -> list[str]:
        return lora_names()

    @cached_property
    def groups(self) -> dict[str, list[forms.BoundField]]:
        """The bound fields by where the page puts them (RequestField.group)."""
        groups: dict[str, list[forms.BoundField]] = {}
        for field in FIELDS:
            groups.setdefault(field.group, []).append(self[field.name])
        return groups


def generate_form(params: Mapping) -> GenerateForm:
    """The form as the page opens it: recipes.form_initial's values, the chosen model's
    sizes."""
    initial = recipes.form_initial(params)
    return GenerateForm(initial=initial, model=recipes.model_spec(str(initial["model"])))
