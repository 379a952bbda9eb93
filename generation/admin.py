from django import forms
from django.contrib import admin

from . import engine, registry
from .models import BlockedPhrase, InputImage, Job, ModelSource, Output, WeightsHash


class OutputInline(admin.TabularInline):
    model = Output
    extra = 0
    fields = ["index", "image", "width", "height", "created"]
    readonly_fields = fields
    can_delete = False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ["prompt", "owner", "status", "attempt", "step", "total_steps", "queued_at"]
    list_filter = ["status"]
    search_fields = ["owner__username", "recipe__prompt"]
    readonly_fields = [
        "owner", "recipe", "status", "attempt", "worker", "queued_at", "started_at",
        "heartbeat", "finished_at", "step", "total_steps", "timings", "error",
    ]
    exclude = ["trajectory"]
    inlines = [OutputInline]

    @admin.display(description="Prompt")
    def prompt(self, job: Job) -> str:
        return job.recipe.get("prompt", "")[:80]

    def has_add_permission(self, request):
        return False


class ModelSourceForm(forms.ModelForm):
    class Meta:
        model = ModelSource
        fields = ["name", "source", "enabled"]

    def clean_name(self):
        """Refuse a name the settings or the models folder give a model already: theirs
        would win (generation.registry), and this entry would never be used."""
        name = self.cleaned_data["name"]
        if name in registry.configured():
            raise forms.ValidationError(
                "The settings or the models folder have a model of this name already."
            )
        return name

    def clean_source(self):
        """Refuse, with the reason, a source Studio cannot read: configs and tokenizer are
        checked here; the weights load on a worker's first job."""
        source = self.cleaned_data["source"].strip()
        try:
            engine.load_spec(source)
        except engine.ModelLoadError as exc:
            raise forms.ValidationError(f"Studio cannot read this model: {exc}") from exc
        return source


@admin.register(ModelSource)
class ModelSourceAdmin(admin.ModelAdmin):
    form = ModelSourceForm
    list_display = ["name", "source", "enabled", "created"]
    list_filter = ["enabled"]
    search_fields = ["name", "source"]


@admin.register(BlockedPhrase)
class BlockedPhraseAdmin(admin.ModelAdmin):
    list_display = ["phrase", "note", "created"]
    search_fields = ["phrase"]


@admin.register(WeightsHash)
class WeightsHashAdmin(admin.ModelAdmin):
    """Hashes the workers and `manage.py models` computed. Deleting one makes the next
    worker that runs the model hash it again."""

    list_display = ["path", "short_hash", "size", "hashed_at"]
    search_fields = ["path", "sha256"]
    readonly_fields = ["path", "size", "mtime_ns", "sha256", "hashed_at"]

    @admin.display(description="sha256")
    def short_hash(self, row: WeightsHash) -> str:
        return row.sha256[:10]

    def has_add_permission(self, request):
        return False


@admin.register(InputImage)
class InputImageAdmin(admin.ModelAdmin):
    """Images and masks users started from, kept for their jobs' reproductions. Read-only:
    a recipe names its input by hash, so an edited file could never reproduce."""

    list_display = ["sha256", "kind", "owner", "width", "height", "created"]
    list_filter = ["kind"]
    search_fields = ["sha256", "owner__username"]
    readonly_fields = ["owner", "sha256", "kind", "width", "height", "file", "created"]

    def has_add_permission(self, request):
        return False
