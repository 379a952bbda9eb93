"""An imported file goes with its row, however the row goes: its own delete or its owner's
account (generation.files says when and why on commit). Connected in GalleryConfig.ready."""

from generation.files import delete_file_on_commit


def import_deleted(sender, instance, using, **kwargs) -> None:
    delete_file_on_commit(instance.file, using=using)
