"""Plain SMTP, for self-hosters and local mail catchers: one connection per batch, one message per recipient.

STARTTLS and AUTH as configured. Outcomes per recipient: a refused recipient fails alone (5xx) or is retried
(4xx, e.g. greylisting); a connection that cannot be opened, or breaks mid-batch, retries what was not sent.
A timeout waiting for the server's answer to a message is the ambiguous case (it may have been accepted).
"""

from __future__ import annotations

import smtplib
import ssl
import time
from collections import Counter
from collections.abc import Callable
from email.policy import SMTP as SMTP_POLICY

import structlog

from alerts.logs import redact
from alerts.transports.base import TIMEOUT, UNREACHABLE, Batch, Outcome, Recipient, Result
from alerts.transports.mime import build_message

log = structlog.get_logger("alerts.transports.smtp")


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    return redact(f"SMTP {code}: {text}")[:1000]


class SMTPTransport:
    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int = 25,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout_s: float = 30.0,
        local_hostname: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        budget_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        # The server's reply code to each message ("250", "451"...), see transports.base.
        self.answers: Counter[str] = Counter()
        self.port = port
        self.username = username
        self._password = password
        self.starttls = starttls
        self.timeout_s = timeout_s
        # Without it smtplib asks DNS for this machine's name on every connection.
        self.local_hostname = local_hostname or "localhost"
        self.ssl_context = ssl_context
        self.budget_s = budget_s
        self._clock = clock

    def __repr__(self) -> str:
        return f"SMTPTransport(host={self.host!r}, port={self.port})"

    def _connect(self) -> smtplib.SMTP:
        conn = smtplib.SMTP(self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout_s)
        try:
            conn.ehlo()
            if self.starttls:
                conn.starttls(context=self.ssl_context or ssl.create_default_context())
                conn.ehlo()
            if self.username:
                conn.login(self.username, self._password or "")
        except BaseException:
            conn.close()
            raise
        return conn

    def send(self, batch: Batch) -> list[Result]:
        if not batch.recipients:
            return []
        try:
            conn = self._connect()
        except (OSError, smtplib.SMTPException) as exc:
            self.answers[UNREACHABLE] += 1
            error = f"SMTP server unavailable: {type(exc).__name__}: {redact(str(exc))}"[:500]
            log.warning("smtp.unavailable", host=self.host, port=self.port, error=error)
            return [Result(r.delivery_id, Outcome.RETRY, error=error) for r in batch.recipients]
        deadline = None if self.budget_s is None else self._clock() + self.budget_s
        results: list[Result] = []
        try:
            for index, recipient in enumerate(batch.recipients):
                if deadline is not None and self._clock() > deadline:
                    error = "time budget for this batch ran out before this message"
                    results += [Result(r.delivery_id, Outcome.RETRY, error=error) for r in batch.recipients[index:]]
                    break
                result, connection_ok = self._send_one(conn, batch, recipient)
                results.append(result)
                self._count(result)
                if not connection_ok:
                    error = f"not tried: an earlier message of this batch failed: {result.error}"[:500]
                    results += [
                        Result(r.delivery_id, Outcome.RETRY, error=error) for r in batch.recipients[index + 1 :]
                    ]
                    break
        finally:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                conn.close()
        log.info(
            "smtp.batch",
            recipients=len(batch.recipients),
            sent=sum(1 for r in results if r.outcome is Outcome.SENT),
            failed=sum(1 for r in results if r.outcome is Outcome.FAILED),
            retry=sum(1 for r in results if r.outcome is Outcome.RETRY),
        )
        return results

    def _count(self, result: Result) -> None:
        if result.outcome is Outcome.SENT:
            self.answers["250"] += 1
        elif result.error_code is not None:
            self.answers[str(result.error_code)] += 1
        elif result.ambiguous:
            self.answers[TIMEOUT] += 1

    def _send_one(self, conn: smtplib.SMTP, batch: Batch, recipient: Recipient) -> tuple[Result, bool]:
        """Send one message. Returns its result and whether the connection is still usable."""
        rid = recipient.delivery_id
        try:
            message = build_message(batch, recipient)
        except ValueError as exc:
            return Result(rid, Outcome.FAILED, error=f"cannot build the message: {exc}"[:500]), True
        try:
            data = message.as_bytes(policy=SMTP_POLICY)
            conn.sendmail(batch.from_email, [recipient.email], data)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()), (550, b"refused"))
            outcome = Outcome.RETRY if 400 <= code < 500 else Outcome.FAILED
            return Result(rid, outcome, error=_reply(code, text), error_code=code), True
        except smtplib.SMTPSenderRefused as exc:
            # The server takes no mail from us (TLS or auth required, sender not allowed): an account or
            # configuration problem, not the recipient's. Retried, and the rest of the batch is not tried.
            return Result(
                rid, Outcome.RETRY, error=_reply(exc.smtp_code, exc.smtp_error), error_code=exc.smtp_code
            ), False
        except smtplib.SMTPResponseException as exc:
            # Data refused...: 4xx is temporary, 5xx is final for this message.
            outcome = Outcome.RETRY if 400 <= exc.smtp_code < 500 else Outcome.FAILED
            return Result(rid, outcome, error=_reply(exc.smtp_code, exc.smtp_error), error_code=exc.smtp_code), True
        except TimeoutError as exc:
            # The message may have gone through before the answer timed out.
            error = f"no answer from the SMTP server ({type(exc).__name__}); acceptance unknown"
            return Result(rid, Outcome.RETRY, error=error, ambiguous=True), False
        except (OSError, smtplib.SMTPException) as exc:
            error = f"SMTP connection failed: {type(exc).__name__}: {redact(str(exc))}"[:500]
            return Result(rid, Outcome.RETRY, error=error), False
        return Result(rid, Outcome.SENT, provider_message_id=recipient.message_id.strip("<>")[:200]), True
