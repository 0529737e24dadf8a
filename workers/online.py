"""Online counts: sums every replica's subscriber counts and publishes the changes.

Event `online` with `{"topic", "count"}` on `presence.<topic>`, at most once per
`online_interval_seconds` per topic. The counts last published are kept in Redis, so
a restarted worker publishes only what changed meanwhile.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

from service.models import PRESENCE_PREFIX as PREFIX
from service.models import PublishEvent
from service.storage import keys
from workers.runtime import Runtime

_TOPIC_MAX = 128
_EVENTS_PER_PUBLISH = 500


def changes(published: Mapping[str, int], counts: Mapping[str, int]) -> dict[str, int]:
    """Counts that differ from the ones last published; a topic no one follows is 0.

    Presence topics are not counted themselves, and topics whose presence topic
    would be too long are left out.
    """
    changed = {
        topic: n
        for topic, n in counts.items()
        if published.get(topic) != n
        and not topic.startswith(PREFIX)
        and len(PREFIX) + len(topic) <= _TOPIC_MAX
    }
    changed |= {topic: 0 for topic, n in published.items() if n and topic not in counts}
    return changed


async def run(rt: Runtime) -> None:
    store = rt.need_store()
    mark = keys.worker_mark("online", "published")
    recorded = await rt.retry("reading the published counts", lambda: store.read_mark(mark))
    published = {topic: int(n) for topic, n in recorded.items()}
    while True:
        counts = await rt.retry("summing the online counts", store.online)
        changed = changes(published, counts)
        items = list(changed.items())
        for start in range(0, len(items), _EVENTS_PER_PUBLISH):
            part = dict(items[start : start + _EVENTS_PER_PUBLISH])
            events = [
                PublishEvent(topic=PREFIX + t, event="online", data={"topic": t, "count": n})
                for t, n in part.items()
            ]
            await rt.retry("publishing online counts", partial(rt.sink.publish, events))
            recording = {t: str(n) for t, n in part.items()}
            await rt.retry(
                "recording the published counts", partial(store.write_mark, mark, recording)
            )
            published.update(part)
        await rt.sleep(rt.settings.online_interval_seconds)
