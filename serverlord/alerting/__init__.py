"""Alert delivery: channels, the notification outbox, transports and the alert policy.

Entry points for the shard process:

- `decide(state, config, event, now)` and `next_wakeup(state, config)` (policy): which
  notification kinds an event calls for, and when to call again with a `tick`.
- `build_payload(...)` and `notification_rows(...)`: the rows for one event.
- `enqueue(cursor, rows)` (outbox): insert them in the transaction of the flip.
  `cancel_pending` and `delete_for_checks` drop them in a later transaction.
- `Deliverer(pool, clock, channel_loader, ...)`: `run()`, `wake()`, `close()`.
- `CatalogChannelLoader(catalog_pool, clock)`: the `channel_loader` for the catalog.
- `validate_channel(kind, config)`: the API's check of a channel config.
"""

from serverlord.alerting.channels import (
    CatalogChannelLoader,
    Channel,
    ChannelError,
    ChannelLoader,
    create_channel,
    validate_channel,
    validate_channel_name,
)
from serverlord.alerting.deliverer import Deliverer, default_transports
from serverlord.alerting.notifications import (
    Notification,
    NotificationRow,
    build_payload,
    notification_rows,
)
from serverlord.alerting.outbox import (
    INSERT_SQL,
    cancel_pending,
    delete_for_checks,
    enqueue,
    enqueue_params,
)
from serverlord.alerting.policy import (
    DEFAULT_POLICY,
    Decision,
    Event,
    NotificationKind,
    PolicyConfig,
    PolicyState,
    decide,
    next_wakeup,
)
from serverlord.alerting.settings import AlertSettings, alert_settings_from_env

__all__ = [
    "DEFAULT_POLICY",
    "INSERT_SQL",
    "AlertSettings",
    "CatalogChannelLoader",
    "Channel",
    "ChannelError",
    "ChannelLoader",
    "Decision",
    "Deliverer",
    "Event",
    "Notification",
    "NotificationKind",
    "NotificationRow",
    "PolicyConfig",
    "PolicyState",
    "alert_settings_from_env",
    "build_payload",
    "cancel_pending",
    "create_channel",
    "decide",
    "default_transports",
    "delete_for_checks",
    "enqueue",
    "enqueue_params",
    "next_wakeup",
    "notification_rows",
    "validate_channel",
    "validate_channel_name",
]
