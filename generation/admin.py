from django.contrib import admin

from .models import BlockedPhrase, Job, Output


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


@admin.register(BlockedPhrase)
class BlockedPhraseAdmin(admin.ModelAdmin):
    list_display = ["phrase", "note", "created"]
    search_fields = ["phrase"]
