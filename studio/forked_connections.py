"""Django's database connections in a process forked from one that used them (a worker's
sidecar, generation/sidecar.py). Django has no public way to hand a forked child connections
of its own, so this leans on its internals, in this one place:

- `connections.all(initialized_only=True)` and a connection's `connection` attribute (the
  DB-API connection it holds);
- the PostgreSQL backend's pools, one per alias in its `_connection_pools` class attribute,
  and the `pool` entry of a database's OPTIONS that turns pooling on.

pyproject.toml pins Django's range, and tests/generation/test_library_internals.py fails if
an upgrade changes any of them.
"""

from django.db import connections

# The parent's connections and pools, as forked: their sockets are the parent's, so they are
# kept here, never used, never closed (closing one would end the parent's session).
_inherited: list = []


def disown() -> None:
    """In a forked child: leave the parent's connections alone, and open connections of this
    process's own from now on, outside any pool: a forked pool would hand out the parent's
    connections, and its maintenance threads were not forked with it."""
    for database in connections.all(initialized_only=True):
        _inherited.append(database.connection)
        database.connection = None
    for database in connections.all():
        pools = getattr(type(database), "_connection_pools", None)
        if pools:  # the PostgreSQL backend's, shared by every connection of the class
            _inherited.append(dict(pools))
            pools.clear()
        options = {k: v for k, v in database.settings_dict["OPTIONS"].items() if k != "pool"}
        database.settings_dict = {**database.settings_dict, "OPTIONS": options}
