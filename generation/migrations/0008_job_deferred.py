from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("generation", "0007_inputimage"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="deferred",
            field=models.PositiveSmallIntegerField(default=0),
        ),
    ]
