"""The replicated state machine: state, commands, codec, apply. Pure: no I/O."""

from hacluster.fsm.apply import apply, settings_problem
from hacluster.fsm.codec import (
    decode_command,
    decode_snapshot,
    encode_command,
    encode_snapshot,
    state_digest,
)
from hacluster.fsm.events import Event
from hacluster.fsm.model import ClusterState

__all__ = [
    "ClusterState",
    "Event",
    "apply",
    "decode_command",
    "decode_snapshot",
    "encode_command",
    "encode_snapshot",
    "settings_problem",
    "state_digest",
]
