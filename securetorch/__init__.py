"""securetorch: PyTorch and Hugging Face models under three-party secure computation (PUMA).

Inside a party (a function run by ``Cluster.run`` or ``puma.simulate``)::

    x = puma.share(t, owner=1)          # SharedTensor
    y = (x @ w).reveal()                # ordinary torch code, dispatched to protocols
"""

from securetorch import ring
from securetorch.check import CheckReport, check
from securetorch.comm.profile import NetworkProfile
from securetorch.comm.stats import CommStats
from securetorch.errors import AccessError, InputError, PartyError
from securetorch.ring import DEFAULT_FRAC_BITS
from securetorch.runtime.cluster import Cluster, InProcessCluster, LocalCluster, run_local
from securetorch.runtime.simulator import Simulator, simulate
from securetorch.secure import SecureModel, load_shares, mean_pooling, save_shares, secure
from securetorch.session.context import rank, stats
from securetorch.tensor import SharedTensor, share
from securetorch.tensor.payload import private

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_FRAC_BITS",
    "AccessError",
    "CheckReport",
    "Cluster",
    "CommStats",
    "InProcessCluster",
    "InputError",
    "LocalCluster",
    "NetworkProfile",
    "PartyError",
    "SecureModel",
    "SharedTensor",
    "Simulator",
    "check",
    "load_shares",
    "mean_pooling",
    "private",
    "rank",
    "ring",
    "run_local",
    "save_shares",
    "secure",
    "share",
    "simulate",
    "stats",
]
