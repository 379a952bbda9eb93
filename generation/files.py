"""A generated image's file goes with its row, however the row goes: the image's own delete,
its job's, or its owner's account; an input image's with its owner's account, the only thing
that deletes inputs. Connected in GenerationConfig.ready.

The file is deleted once the deletion has committed, so a rolled-back delete never leaves a row
pointing at a missing file; deleting a file already gone is harmless (the storage ignores it).
"""

from django.db import transaction
from django.db.models.fields.files import FieldFile


def delete_file_on_commit(file: FieldFile, *, using: str) -> None:
    storage, name = file.storage, file.name
    if name:
        transaction.on_commit(lambda: storage.delete(name), using=using)


def output_deleted(sender, instance, using, **kwargs) -> None:
    delete_file_on_commit(instance.image, using=using)


def input_deleted(sender, instance, using, **kwargs) -> None:
    delete_file_on_commit(instance.file, using=using)
