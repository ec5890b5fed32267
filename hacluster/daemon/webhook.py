"""The built-in webhook ([notify] webhook_url): an HTTP POST of the notification's
JSON (daemon/notify.py), with a bearer token read from a file at every delivery (so
it rotates in place). Any 2xx answer counts as delivered; anything else, or no answer
within the timeout, raises NotifyFailed (and the delivery is retried)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from hacluster.daemon.notify import NotifyFailed


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer to report, not to follow with the token."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class WebhookNotifier:
    def __init__(self, url: str, timeout_s: float, token_file: str = "") -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.token_file = token_file
        self._opener = urllib.request.build_opener(_NoRedirect)

    def __str__(self) -> str:
        return f"webhook {self.url}"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": "hacluster"}
        if self.token_file:
            try:
                token = Path(self.token_file).read_text().strip()
            except OSError as exc:
                raise NotifyFailed(f"token file {self.token_file}: {exc.strerror}") from None
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def notify(self, event: dict[str, object]) -> None:
        request = urllib.request.Request(self.url, data=json.dumps(event).encode(),
                                         headers=self._headers(), method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as answer:
                answer.read(65536)
                status = answer.status
        except urllib.error.HTTPError as exc:
            raise NotifyFailed(f"HTTP {exc.code} {exc.reason}") from None
        except TimeoutError:
            raise NotifyFailed(f"no answer within {self.timeout_s:g} s") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, TimeoutError):
                raise NotifyFailed(f"no answer within {self.timeout_s:g} s") from None
            raise NotifyFailed(f"cannot reach it: {reason}") from None
        if not 200 <= status < 300:
            raise NotifyFailed(f"HTTP {status}")
