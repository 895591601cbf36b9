"""Load apprise and its plugins once, with their import-time deprecation warnings muted.

apprise 2.3 imports the `imghdr` module, which Python 3.11 deprecates, while it loads its
plugins on first use. Under `-W error` (the test suite's setting) that warning would
become an exception inside the first channel validation or delivery. The plugins are
therefore loaded here once, under a filter that mutes only that warning.
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING

from serverlord.alerting.redaction import install_log_redaction

if TYPE_CHECKING:
    from apprise import AppriseAsset
    from apprise.plugins.base import NotifyBase


@functools.cache
def load_apprise() -> None:
    """Import apprise and load its plugins. Later calls return at once.

    Also installs the log redaction, because apprise logs the URLs it cannot parse.
    """
    install_log_redaction()
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*imghdr.*deprecated", category=DeprecationWarning
        )
        import apprise

        # Checking membership of a schema makes apprise import every plugin module.
        apprise.Apprise.instantiate("json://localhost")


def new_asset() -> AppriseAsset:
    """Return an apprise asset that keeps apprise's persistent store in memory only."""
    load_apprise()
    import apprise

    return apprise.AppriseAsset(storage_mode="memory")


def instantiate(url: str, asset: AppriseAsset | None = None) -> NotifyBase | None:
    """Build the apprise service for `url`, or None when apprise cannot parse it."""
    load_apprise()
    import apprise

    return apprise.Apprise.instantiate(url, asset=asset or new_asset())


def takes_custom_host(service: NotifyBase) -> bool:
    """Return whether the service connects to a host named in its URL.

    Services such as json://, ntfy:// or mattermost:// reach any host a user writes,
    while cloud services such as slack:// use a fixed API host and keep a token in the
    host part of the URL.
    """
    return "host" in type(service).template_tokens and bool(service.host)
