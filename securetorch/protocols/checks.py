"""Checks the parties run on secret inputs before they use them.

``check_one_hot``: a client enters its token ids as a secret one-hot matrix X [rows, V]
(integers), which the parties multiply by the secret embedding table. A client that sent
anything else could probe the weights with arbitrary combinations of table rows (2^63 e_i -
2^63 e_j, for instance, leaks a bit of every weight of two rows), so the parties verify, in
the ring Z_2^64 and without learning X:

    z = X * (X - 1) = 0 elementwise,  and  s = X 1 - 1 = 0 per row.

x (x - 1) = 0 mod 2^64 holds only for x in {0, 1} (x and x - 1 are coprime, so one of them
would have to be 0 mod 2^64), and then a row sum of 1 (V < 2^64) means exactly one 1.

The check also makes sure the client dealt *replicated* shares: P_i's second share must
equal P_{i+1}'s first. A client that added d to every second share (where X = 0) would
pass the test above, which reads first shares, while the embedding product, which reads
both, computes (X + d) T. So every P_i sends SHA-256 of its second share x_{i+1} to P_{i+1},
which compares it with its own x_{i+1}: the receiver learns nothing it does not hold.

Message schedule (P_0 checks w; semi-honest parties, so one checker suffices):
- Local: every P_i computes its additive share w_i of w = (z, s), z_i from the cross terms
  of X * X minus x_i, s_i = row sums of x_i (minus 1 at P_0), plus a zero-sharing alpha_i,
  so each w_i on its own is uniform.
- Round 1: P_1 -> P_0 w_1 (8 bytes per element of X, 8 per row); P_2 -> P_0 SHA-256(w_2)
  (32 bytes). P_0 compares SHA-256(-w_0 - w_1) with it: equal iff w = 0 (up to a SHA-256
  collision). In the same round P_i -> P_{i+1} SHA-256(x_{i+1}) (32 bytes each).
- Round 2: P_0 -> P_1, P_2 its verdict (1 byte each). A party refuses when the verdict or
  its own comparison of shares fails (one that alone finds a mismatch raises, and its
  peers abandon the job when it tells them).

P_0 sees w_1, uniform given its own shares, and learns that w = 0; had the client cheated,
P_0 would learn (z, s) of the client's own input, nothing about anyone else's.
Cost: 2 rounds, 8 (rows x V + rows) + 130 bytes (``one_hot_check_cost``).
"""

from __future__ import annotations

import hashlib

import torch

from securetorch.errors import InputError
from securetorch.protocols.arithmetic import Pair, mul_local, zero_share
from securetorch.session.context import PartyContext


def _digest(values: torch.Tensor) -> torch.Tensor:
    """SHA-256 of ``values``' bytes (hashed on the CPU), as 32 uint8 on ``values``' device."""
    digest = hashlib.sha256(values.contiguous().cpu().numpy().tobytes()).digest()
    return torch.frombuffer(bytearray(digest), dtype=torch.uint8).to(values.device)


def check_one_hot(ctx: PartyContext, x: Pair) -> None:
    """Raise ``InputError`` unless the secret integer tensor x [..., V] is one-hot along its
    last dimension (every entry 0 or 1, every row summing to 1) and its shares are
    replicated consistently."""
    vocab = x[0].shape[-1]
    rows = x[0].numel() // max(vocab, 1)
    z = (mul_local(x, x) - x[0]).reshape(-1)
    s = x[0].reshape(rows, vocab).sum(dim=1)
    if ctx.rank == 0:  # P_0 subtracts the public 1 of every row sum
        s = s - 1
    w = torch.cat([z, s])
    w = w + zero_share(ctx, w.shape)
    replicated = _digest(x[1])  # for P_{i+1}, which holds x_{i+1} as its first share
    if ctx.rank == 0:
        got = ctx.net.exchange({1: [replicated]}, [1, 2])
        valid = torch.equal(_digest(-w - got[1][0]), got[2][0])
        consistent = torch.equal(got[2][1], _digest(x[0]))
        verdict = torch.tensor([1 if valid and consistent else 0], dtype=torch.uint8, device=ctx.device)
        ctx.net.exchange({1: [verdict], 2: [verdict]}, [])
    else:
        to_p0 = [w] if ctx.rank == 1 else [_digest(w), replicated]
        sends = {0: to_p0} if ctx.rank == 2 else {0: to_p0, 2: [replicated]}
        got = ctx.net.exchange(sends, [ctx.prev_rank])
        consistent = torch.equal(got[ctx.prev_rank][-1], _digest(x[0]))
        valid = bool(ctx.net.exchange({}, [0])[0][0][0] == 1)
    if not consistent:
        raise InputError(
            "the shares of the input do not fit together (a party's second share differs from the next "
            "party's first): this driver did not deal replicated shares of one input"
        )
    if not valid:
        raise InputError(
            "the input is not a one-hot matrix (an entry other than 0 or 1, or a row that does not sum to 1): "
            "token ids enter as one-hot rows, so this driver did not send the token ids it claims"
        )


def one_hot_check_cost(rows: int, vocab: int) -> tuple[int, int]:
    """Exact (rounds, bytes of all parties) of ``check_one_hot`` on ``rows`` rows of width ``vocab``."""
    return 2, 8 * (rows * vocab + rows) + 32 + 3 * 32 + 2
