"""Where Studio relies on channels_redis's pub/sub layer beyond its public API, in one place.

Two things here lean on how that layer works inside. pyproject.toml pins its range, and
tests/generation/test_library_internals.py fails if an upgrade changes either:

- The Redis channel the layer maps a group to. A worker sends job messages from sync code
  with a plain Redis client (generation/broadcast.py): one PUBLISH of the layer's own
  serialized message on that channel, instead of the layer's async `group_send`, which from
  sync code needs an event loop and costs a thread hand-over per message.
- Its receiver idles 0.1 s between looks while its connection has no subscription at all,
  that is while no socket is open: the first messages to a new watcher on a quiet server then
  wait up to 0.1 s. One subscription that never ends keeps the receiver listening
  (`group_add`): a channel of the layer's own that nothing sends to and nothing reads. (While
  Redis is down, the receiver then logs its failed reads about once a second even with no
  socket open.)
"""

import asyncio
import weakref

KEEP_LISTENING_PREFIX = "studio.keep-listening."

_listening_loops: weakref.WeakSet = weakref.WeakSet()


def group_channel(prefix: str, group: str) -> str:
    """The Redis channel a pub/sub layer with this key prefix publishes `group`'s messages on."""
    return f"{prefix}__group__{group}"


async def group_add(layer, group: str, channel: str) -> None:
    """`layer.group_add`, with this event loop's receiver kept listening first."""
    loop = asyncio.get_running_loop()
    if loop not in _listening_loops:
        await layer.new_channel(prefix=KEEP_LISTENING_PREFIX)
        _listening_loops.add(loop)
    await layer.group_add(group, channel)
