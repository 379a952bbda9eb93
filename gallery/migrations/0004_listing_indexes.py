"""An index per gallery listing in its keyset order (gallery.selectors.SORTS), so that a page
of any depth is one short index range: the public gallery newest and most liked, an owner's
images, a team's. The public one replaces `image_public_new`, which lacked the tie-breaking
primary key. Building them takes about a second at 100,000 images."""

from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('gallery', '0003_reproductions_reveal_one_image'),
        ('generation', '0007_inputimage'),
        ('studio', '0001_initial'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='image',
            name='image_public_new',
        ),
        migrations.AddIndex(
            model_name='image',
            index=models.Index(fields=['visibility', 'hidden', 'created', 'output'], name='image_new'),
        ),
        migrations.AddIndex(
            model_name='image',
            index=models.Index(fields=['visibility', 'hidden', 'like_count', 'created', 'output'], name='image_liked'),
        ),
        migrations.AddIndex(
            model_name='image',
            index=models.Index(fields=['owner', 'created', 'output'], name='image_owner_new'),
        ),
        migrations.AddIndex(
            model_name='image',
            index=models.Index(fields=['team', 'visibility', 'hidden', 'created', 'output'], name='image_team_new'),
        ),
    ]
