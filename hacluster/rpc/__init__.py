"""The admin RPC transport: framing (protocol), the peer's server (server), the
blocking client for hactl (client) and the asyncio client for peer-to-leader
forwarding (aclient). What the methods do lives elsewhere."""
