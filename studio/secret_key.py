"""The development SECRET_KEY: random per install, kept out of git.

A key written in the source is public, and anyone who knows it can sign a session cookie or a
shared image link for any server that uses it, including `make run` on a LAN. Production sets
SECRET_KEY itself; settings refuse to start with DEBUG off and none.
"""

import os
import secrets
import tempfile
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

# A key shorter than this was not written by us: refuse it rather than sign with it.
MIN_LENGTH = 50


def install_secret_key(run_dir: Path) -> str:
    """This install's key, read from `run_dir/secret_key`, which is made on first use.

    1. Read the file if it is there.
    2. Otherwise write a new key to a private temporary file (mkstemp makes it 0600) and link
       it into place: the link fails if the file appeared meanwhile, so when the web server,
       the worker and the scheduler start at once they all end up with the one key that won,
       and none of them ever reads a half-written file.
    """
    path = run_dir / "secret_key"
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=run_dir, prefix=".secret_key.")
        try:
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(MIN_LENGTH))
                file.flush()
                os.fsync(file.fileno())
            os.link(temporary, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temporary)
    key = path.read_text().strip()
    if len(key) < MIN_LENGTH:
        raise ImproperlyConfigured(f"{path} holds no usable key: delete it to make a new one.")
    return key
