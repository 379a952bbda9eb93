"""Staff moderate from the admin: the review queue is the Image list filtered to open
reports, with bulk hide, restore and dismiss; the audit log is read-only."""

from django.contrib import admin
from django.db.models import Count, Q

from . import moderation
from .models import Collection, Image, ModerationEvent, PngImport, Report, Reproduction


class OpenReportsFilter(admin.SimpleListFilter):
    title = "reports"
    parameter_name = "reported"

    def lookups(self, request, model_admin):
        return [("open", "Open reports")]

    def queryset(self, request, queryset):
        if self.value() == "open":
            return queryset.filter(open_reports__gt=0)
        return queryset


class ReportInline(admin.TabularInline):
    model = Report
    extra = 0
    fields = ["reporter", "reason", "status", "created"]
    readonly_fields = fields
    can_delete = False


@admin.register(Image)
class ImageAdmin(admin.ModelAdmin):
    list_display = ["prompt", "owner", "visibility", "hidden", "open_reports", "created"]
    list_filter = [OpenReportsFilter, "hidden", "visibility"]
    search_fields = ["prompt", "owner__username"]
    readonly_fields = [
        "output", "owner", "prompt", "model_name", "sampler", "seed", "like_count", "created",
        "hidden", "hidden_reason",
    ]
    fields = ["visibility", "team", *readonly_fields]
    inlines = [ReportInline]
    actions = ["hide", "restore", "dismiss"]

    def get_queryset(self, request):
        open_reports = Count("reports", filter=Q(reports__status=Report.Status.OPEN))
        return super().get_queryset(request).annotate(open_reports=open_reports)

    @admin.display(ordering="open_reports")
    def open_reports(self, image):
        return image.open_reports

    @admin.action(description="Hide selected images from the public")
    def hide(self, request, queryset):
        self._apply(request, queryset, "hide", "Hid {} image(s).")

    @admin.action(description="Restore selected images")
    def restore(self, request, queryset):
        self._apply(request, queryset, "restore", "Restored {} image(s).")

    @admin.action(description="Dismiss the reports on selected images")
    def dismiss(self, request, queryset):
        self._apply(request, queryset, "dismiss", "Dismissed reports on {} image(s).")

    def _apply(self, request, queryset, action: str, done: str) -> None:
        count = moderation.moderation_apply(action=action, images=queryset, actor=request.user)
        self.message_user(request, done.format(count))


@admin.register(ModerationEvent)
class ModerationEventAdmin(admin.ModelAdmin):
    list_display = ["created", "action", "image_uuid", "image", "actor", "reason"]
    list_filter = ["action"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Collection)
class CollectionAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "visibility"]
    search_fields = ["name", "owner__username"]


@admin.register(Reproduction)
class ReproductionAdmin(admin.ModelAdmin):
    list_display = ["created", "image", "imported", "job", "verdict", "max_diff", "psnr"]
    list_filter = ["verdict"]
    readonly_fields = ["job", "image", "imported", "batch_index", "verdict", "max_diff", "psnr",
                       "created"]


@admin.register(PngImport)
class PngImportAdmin(admin.ModelAdmin):
    list_display = ["created", "owner", "format", "width", "height"]
    readonly_fields = ["owner", "file", "format", "width", "height", "recipe", "parameters",
                       "fields", "created"]
