"""Shared setup for the pure-core tests."""

# Import the fsm package before anything else: `import hacluster.core.placement` as the
# very first hacluster import fails on a circular import (placement -> fsm.model ->
# fsm/__init__ -> apply -> lifecycle -> placement). test_purity.py keeps a failing test
# for it; this line keeps the other tests independent of collection order.
import hacluster.fsm  # noqa: F401
