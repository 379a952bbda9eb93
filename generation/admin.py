from django import forms
from django.contrib import admin

from . import engine
from .models import BlockedPhrase, Job, ModelSource, Output


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
