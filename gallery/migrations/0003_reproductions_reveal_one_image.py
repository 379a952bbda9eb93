"""A reproduction's job reveals only the original's image of its batch (Job.reveals).

Reproductions made before kept the whole re-run batch, each image in the gallery of whoever
asked: copies of the original's siblings, which may be private to someone else. Those that
went to anyone but the original's owner are deleted here, rows and files, as the rule would
have kept them from being stored at all.
"""

from django.db import migrations, transaction
from django.db.models import Exists, OuterRef, Subquery


def reveal_one_image(apps, schema_editor):
    Job = apps.get_model("generation", "Job")
    Output = apps.get_model("generation", "Output")
    Reproduction = apps.get_model("gallery", "Reproduction")
    compared = Reproduction.objects.filter(job_id=OuterRef("pk")).values("batch_index")[:1]
    Job.objects.filter(reproduction__isnull=False).update(reveals=Subquery(compared))
    siblings = Output.objects.filter(job__reveals__isnull=False).exclude(
        index=Subquery(Job.objects.filter(pk=OuterRef("job_id")).values("reveals")[:1])
    )
    # An owner who reproduced their own image copied their own siblings: nothing leaked.
    own = Reproduction.objects.filter(job_id=OuterRef("job_id"), image__owner_id=OuterRef(
        "job__owner_id"))
    siblings = siblings.exclude(Exists(own))
    files = [(output.image.storage, output.image.name) for output in siblings]
    siblings.delete()  # their gallery images, likes, reports and collection places with them
    # The files only once the rows are gone for good, as gallery.services.image_delete does.
    transaction.on_commit(lambda: [storage.delete(name) for storage, name in files])


class Migration(migrations.Migration):

    dependencies = [
        ('gallery', '0002_imports_reproductions'),
        ('generation', '0005_job_reveals_output_trajectory'),
    ]

    operations = [
        # Backwards there is nothing to restore: the copies should never have been stored.
        migrations.RunPython(reveal_one_image, migrations.RunPython.noop),
    ]
