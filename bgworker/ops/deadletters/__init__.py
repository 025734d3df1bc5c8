"""Dead letters: ``{ns}.dead`` read without disturbing it, replayed and purged.

One module per concept, lowest first:

- ``letters``: one letter, read safely whatever it holds (``Letter``, ``detail``).
- ``queue``: the queue and its scan, which holds letters unacknowledged and so leaves the
  queue as it found it; ``Held.ack`` is the only way a letter leaves.
- ``selection``: which letters an action applies to (ids, filters, ages).
- ``reading``: list, show and count what a selection matches, changing nothing.
- ``rule``: the replay rule (what replaying a letter does, from its request row).
- ``actions``: replay and purge, each letter removed only once its effect is done.
- ``cli``: ``bgworker dlq``. The admin console (``bgworker.web.admin``) uses the same.

The request-row side (locks, requeue, the action record) is ``bgworker.store.dead_letters``,
below this package: it imports nothing from here.
"""
