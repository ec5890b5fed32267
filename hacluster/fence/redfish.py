"""Redfish fencing over HTTPS with pyghmi's Redfish client.

Same semantics as the IPMI backend: ForceOff, then poll the system's
PowerState until it reads Off. pyghmi's Redfish client speaks HTTPS only and
its socket timeout is 60 s, so attempts run in a thread abandoned at the
deadline.

Target options (`BmcTarget.options`):
- `sysurl`: the system to fence when the BMC manages several
  (e.g. "/redfish/v1/Systems/node1" or just "node1").
- `tls_fingerprint`: SHA-256 of the BMC's certificate (hex, colons allowed);
  the connection is accepted only if it matches (self-signed BMCs).
Without a fingerprint, `verify_tls=True` checks the certificate against the
system's CAs and the address as host name; `verify_tls=False` accepts any.

`BmcTarget.port` 623 (the IPMI default BmcTarget carries) means HTTPS 443.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
from collections.abc import Callable
from typing import Any

from pyghmi import exceptions as pyghmi_exc
from pyghmi.redfish import command as redfish_command

from hacluster.fence.attempt import (
    Attempt,
    AuthRejected,
    BadConfig,
    CommandRejected,
    FenceFailure,
    NoAnswer,
    describe_error,
)
from hacluster.fence.procedure import PowerSession, SessionFencer
from hacluster.ports import BmcTarget, PowerState

IPMI_DEFAULT_PORT = 623
HTTPS_PORT = 443
KNOWN_OPTIONS = frozenset({"sysurl", "tls_fingerprint"})


def _port(target: BmcTarget) -> int:
    return HTTPS_PORT if target.port == IPMI_DEFAULT_PORT else target.port


def _sysurl(options: dict[str, str]) -> str | None:
    """pyghmi wants the system's path; accept a bare system id too."""
    value = options.get("sysurl", "").strip()
    if not value:
        return None
    return value if value.startswith("/") else f"/redfish/v1/Systems/{value}"


def _cert_check(target: BmcTarget, options: dict[str, str]) -> Callable[[bytes], bool] | None:
    """pyghmi's verifycallback: None means the standard CA + host name check."""
    pin = options.get("tls_fingerprint", "").replace(":", "").strip().lower()
    if pin:
        if len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin):
            raise BadConfig("tls_fingerprint must be a SHA-256 hex digest")
        return lambda der: hashlib.sha256(der).hexdigest() == pin
    if not target.verify_tls:
        return lambda der: True
    return None


def _failure(err: Exception, what: str) -> Exception:
    """Translate a pyghmi/HTTP error into a FenceFailure (or leave a surprise
    alone, to be reported as ERROR)."""
    text = describe_error(err)
    if isinstance(err, (ssl.SSLCertVerificationError, pyghmi_exc.UnrecognizedCertificate)):
        return BadConfig(f"TLS certificate of the BMC not trusted ({text})")
    if isinstance(err, ssl.SSLError):
        return BadConfig(f"TLS handshake with the BMC failed ({text})")
    if isinstance(err, (OSError, http.client.HTTPException)):
        return NoAnswer(f"no answer to {what} ({text})")
    if isinstance(err, pyghmi_exc.PyghmiException):
        lowered = text.lower()
        if "access denied" in lowered or "unauthorized" in lowered or ":401" in lowered:
            return AuthRejected(f"BMC refused the credentials ({text})")
        if "sysurl" in lowered:
            return BadConfig(f"set option sysurl to pick the system ({text})")
        return CommandRejected(f"BMC rejected {what} ({text})")
    return err


_POWER_STATES = {"on": PowerState.ON, "off": PowerState.OFF}


class _RedfishSession:
    def __init__(self, cmd: Any) -> None:
        self._cmd = cmd

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except Exception as err:
            raise _failure(err, what) from None

    def read_power(self) -> PowerState:
        reply = self._call("GET PowerState", self._cmd.get_power)
        # PoweringOn/PoweringOff and the like are not "off" (yet).
        return _POWER_STATES.get(str(reply.get("powerstate", "")), PowerState.UNKNOWN)

    def power_off(self) -> None:
        self._call("Reset ForceOff", lambda: self._cmd.set_power("off"))

    def power_on(self) -> None:
        self._call("Reset On", lambda: self._cmd.set_power("on"))

    def identify(self) -> str:
        self._call("IndicatorLED Blinking", lambda: self._cmd.set_identify(on=True, blink=True))
        return "set IndicatorLED Blinking"

    def close(self) -> None:
        # pyghmi keeps no connection open between requests; a Redfish session
        # token it may hold expires on the BMC by itself.
        pass


class RedfishFencer(SessionFencer):
    """ports.Fencer over Redfish (HTTPS)."""

    threaded = True  # pyghmi's Redfish calls cannot be bounded: abandon them at the deadline

    def __init__(self, *, poll_interval_s: float = 0.1) -> None:
        super().__init__(poll_interval_s)

    def method(self, target: BmcTarget) -> str:
        return f"redfish https://{target.address}:{_port(target)}"

    def _open(self, target: BmcTarget, attempt: Attempt) -> PowerSession:
        options = dict(target.options)
        unknown = sorted(set(options) - KNOWN_OPTIONS)
        if unknown:
            raise BadConfig(f"unknown redfish options: {', '.join(unknown)}")
        if not target.address:
            raise BadConfig("no BMC address")
        check = _cert_check(target, options)
        attempt.note(f"connect as {target.username}")
        try:
            cmd = redfish_command.Command(
                target.address,
                target.username,
                target.password.reveal(),
                check,
                sysurl=_sysurl(options),
                port=_port(target),
            )
        except FenceFailure:
            raise
        except Exception as err:
            raise _failure(err, "connect") from None
        if not cmd.sysurl or not cmd.powerurl:
            raise CommandRejected("BMC offers no system with a Reset action")
        return _RedfishSession(cmd)

