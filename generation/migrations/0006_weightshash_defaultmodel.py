"""Weights hashes kept by (path, size, mtime), so no web request hashes a checkpoint, and each
user's own A1111 model (POST /sdapi/v1/options)."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ('generation', '0005_job_reveals_output_trajectory'),
    ]

    operations = [
        migrations.CreateModel(
            name='DefaultModel',
            fields=[
                ('user', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, primary_key=True, related_name='default_model', serialize=False, to=settings.AUTH_USER_MODEL)),
                ('model', models.CharField(max_length=100)),
                ('updated', models.DateTimeField(default=django.utils.timezone.now)),
            ],
        ),
        migrations.CreateModel(
            name='WeightsHash',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('path', models.CharField(max_length=1024, unique=True)),
                ('size', models.BigIntegerField()),
                ('mtime_ns', models.BigIntegerField()),
                ('sha256', models.CharField(max_length=64)),
                ('hashed_at', models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                'verbose_name': 'weights hash',
                'ordering': ['path'],
            },
        ),
        migrations.AlterField(
            model_name='modelsource',
            name='source',
            field=models.CharField(help_text='A local diffusers directory, a single-file .safetensors checkpoint, or a hub id such as “stable-diffusion-v1-5/stable-diffusion-v1-5” (needs the hub to be reachable).', max_length=500),
        ),
    ]
