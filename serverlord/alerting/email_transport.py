"""Email delivery over SMTP with aiosmtplib, to the server named in the settings.

The SMTP server is chosen by the operator, not by users, so it is not subject to the
address policy that guards webhook targets.
"""

from __future__ import annotations

import aiosmtplib

from serverlord.alerting.channels import Channel
from serverlord.alerting.messages import email_message
from serverlord.alerting.notifications import Notification
from serverlord.alerting.settings import SmtpSettings
from serverlord.alerting.transports import AttemptResult, Outcome, skipped


class EmailTransport:
    def __init__(self, smtp: SmtpSettings | None, site_root: str, timeout: float = 10.0) -> None:
        self._smtp = smtp
        self._site_root = site_root
        self._timeout = timeout

    async def close(self) -> None:
        return None

    async def send(self, channel: Channel, notification: Notification) -> AttemptResult:
        if not channel.wants(notification.kind):
            return skipped(channel, notification.kind)
        smtp = self._smtp
        if smtp is None:
            return AttemptResult(
                Outcome.REJECTED,
                error="SMTP_HOST is not set, so email channels cannot send;"
                " set SMTP_HOST and SMTP_FROM",
            )

        recipients: list[str] = channel.config["to"]
        message = email_message(notification, self._site_root, smtp.sender, recipients)
        try:
            refused, _ = await aiosmtplib.send(
                message,
                hostname=smtp.host,
                port=smtp.port,
                username=smtp.user,
                password=smtp.password,
                use_tls=smtp.use_tls,
                start_tls=smtp.start_tls,
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPTimeoutError as exc:
            return AttemptResult(Outcome.TIMEOUT, error=f"the SMTP server timed out: {exc}")
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = sorted({refusal.code for refusal in exc.recipients})
            permanent = all(code >= 500 for code in codes)
            return AttemptResult(
                Outcome.REJECTED if permanent else Outcome.FAILED,
                status_code=codes[0] if codes else None,
                error=f"the SMTP server refused every recipient (codes {codes})",
            )
        except aiosmtplib.SMTPResponseException as exc:
            # SMTP replies 5xx for permanent failures and 4xx for temporary ones.
            outcome = Outcome.REJECTED if exc.code >= 500 else Outcome.FAILED
            return AttemptResult(
                outcome,
                status_code=exc.code,
                error=f"the SMTP server answered {exc.code}: {exc.message}",
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            return AttemptResult(Outcome.FAILED, error=f"SMTP failed: {type(exc).__name__}: {exc}")

        if refused:
            return AttemptResult(
                Outcome.SENT,
                error=f"sent, but the SMTP server refused {len(refused)} of"
                f" {len(recipients)} recipients",
            )
        return AttemptResult(Outcome.SENT)
