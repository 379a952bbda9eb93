"""Input images and masks (img2img, inpainting), stored once per owner and hash, and the
jobs that start from them."""

import django.db.models.deletion
import django.utils.timezone
import uuid

from django.conf import settings
from django.db import migrations, models

import generation.models


class Migration(migrations.Migration):

    dependencies = [
        ('generation', '0006_weightshash_defaultmodel'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name='InputImage',
            fields=[
                ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                ('sha256', models.CharField(max_length=64)),
                ('kind', models.CharField(choices=[('image', 'Image'), ('mask', 'Mask')], max_length=5)),
                ('width', models.PositiveIntegerField()),
                ('height', models.PositiveIntegerField()),
                ('file', models.FileField(max_length=200, upload_to=generation.models.input_path)),
                ('created', models.DateTimeField(default=django.utils.timezone.now)),
                ('owner', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='input_images', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'ordering': ['-created'],
            },
        ),
        migrations.AddField(
            model_name='job',
            name='inputs',
            field=models.ManyToManyField(blank=True, related_name='jobs', to='generation.inputimage'),
        ),
        migrations.AddIndex(
            model_name='inputimage',
            index=models.Index(fields=['sha256'], name='input_sha256'),
        ),
        migrations.AddConstraint(
            model_name='inputimage',
            constraint=models.UniqueConstraint(fields=('owner', 'sha256'), name='one_input_per_owner_hash'),
        ),
    ]
