"""The collections' many-to-many table becomes a model of its own, CollectionItem, with each
image's date beside it and an index in a collection's listing order. The table, its rows and
its constraint stay as they are; the date is filled in from the images."""

import django.db.models.deletion
from django.db import migrations, models

FILL = """
UPDATE gallery_collection_images AS item SET created = image.created
FROM gallery_image AS image WHERE image.output_id = item.image_id
"""


class Migration(migrations.Migration):
    dependencies = [
        ("gallery", "0006_team_listing_index"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="CollectionItem",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True,
                                                   serialize=False, verbose_name="ID")),
                        ("collection", models.ForeignKey(
                            on_delete=django.db.models.deletion.CASCADE, related_name="items",
                            to="gallery.collection")),
                        ("image", models.ForeignKey(
                            on_delete=django.db.models.deletion.CASCADE,
                            related_name="collection_items", to="gallery.image")),
                    ],
                    options={
                        "db_table": "gallery_collection_images",
                        "unique_together": {("collection", "image")},
                    },
                ),
                migrations.AlterField(
                    model_name="collection",
                    name="images",
                    field=models.ManyToManyField(blank=True, related_name="collections",
                                                 through="gallery.CollectionItem",
                                                 to="gallery.image"),
                ),
            ],
        ),
        migrations.AddField(
            model_name="collectionitem",
            name="created",
            field=models.DateTimeField(null=True),
        ),
        migrations.RunSQL(FILL, migrations.RunSQL.noop),
        migrations.AlterField(
            model_name="collectionitem",
            name="created",
            field=models.DateTimeField(),
        ),
        migrations.AddIndex(
            model_name="collectionitem",
            index=models.Index(fields=["collection", "created", "image"],
                               name="collection_item_new"),
        ),
    ]
