"""The admin RPC transport, independent of what the methods do.

protocol  frames, envelopes, error codes, params schemas
server    the peer's listener (Unix socket, optionally TCP+TLS)
auth      who is calling: peer uid, client certificate, bearer token
listen    sockets and streams under the server
client    blocking client for hactl
aclient   asyncio client (pipelined), for forwarding writes to the leader
endpoint  what both clients share: targets, TLS, readable connection errors
"""
