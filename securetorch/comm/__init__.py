"""Transport between the parties: framing, ZeroMQ links, counters."""

from securetorch.comm.stats import CommStats

__all__ = ["CommStats"]
