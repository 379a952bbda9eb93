import psycopg
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from psycopg import sql


class Command(BaseCommand):
    help = "Create the configured Postgres database if it does not exist yet."

    def handle(self, *args, **options):
        db = settings.DATABASES["default"]
        params = {
            "host": db.get("HOST") or None,
            "port": db.get("PORT") or None,
            "user": db.get("USER") or None,
            "password": db.get("PASSWORD") or None,
        }
        try:
            # Connect to the maintenance database: the target may not exist yet.
            with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]
                ).fetchone()
                if not exists:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db["NAME"])))
                    self.stdout.write(f"Created database {db['NAME']}.")
        except psycopg.OperationalError as exc:
            raise CommandError(
                f"Cannot reach Postgres at {params['host']}:{params['port']} ({exc}). "
                "Is it running? See the README's Quick start."
            ) from exc
