"""hacluster: HA cluster manager for KVM/libvirt virtual machines, built on Raft."""

# The release (pyproject.toml reads it from here). Which command versions a peer
# understands is not derived from it: each peer announces those (core/versions.py).
__version__ = "0.3.0"
