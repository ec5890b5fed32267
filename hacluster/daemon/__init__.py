"""The peer daemon: composition of the pure core with Raft, libvirt, fencing and RPC."""
