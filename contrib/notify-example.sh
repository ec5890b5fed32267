#!/bin/sh
# Example notification hook ([notify] hook = "/usr/local/lib/hacluster/notify").
# The leader runs it once per event with one JSON object on stdin, e.g.
#   {"event": "fence-succeeded", "host": "h2", "message": "...", "index": 41,
#    "cluster": "h1", "data": {...}}
# Events: fence-requested, fence-succeeded, fence-failed, fence-cap-reached,
# fence-held (no majority of voters could confirm it), fence-cancelled (the host renewed),
# host-recovered, bmc-failing (the host's own BMC check fails), peer-stopped,
# vm-error, vm-pending (no host fits), vm-start-locked (a start refused for a held disk
# lease; a copy runs elsewhere), storage-active (its lease expired but it still writes
# shared storage: not fenced), storage-unreadable (the leader cannot read a silent host's
# storage). For vm-* events "vm" names the VM and "host" where it was. It must finish
# within [timing] notify_timeout_s and exit 0; otherwise it is run again ([notify]
# attempts, retry_backoff_s).
event=$(cat)
logger -t hacluster-notify -- "$event"
# mail -s "hacluster: $(printf '%s' "$event" | sed 's/.*"event": "\([^"]*\)".*/\1/')" ops@example.com <<MAIL
# $event
# MAIL
