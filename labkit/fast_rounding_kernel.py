"""The numba kernel behind :mod:`labkit.fast_rounding` (imported on first use; that module explains the method)."""

import math

import numba
import numpy as np

#: Values processed per block: a block's magic numbers stay in the L1 cache between its loops.
BLOCK = 4096


@numba.njit(cache=True, nogil=True, boundscheck=False)
def round_nearest_kernel(x, x_bits, out, lowest, highest, offset, max_normal, beyond, count):
    """Round the FP32 vector ``x`` (``x_bits``: the same memory as uint32) into ``out``.

    ``lowest``/``highest``: bits of the format's first and top binades; ``offset``: added to a binade's
    bits it gives the magic number ``1.5 · 2^(23-m) · binade``; beyond ``max_normal`` a value becomes
    ``beyond``. Returns (underflows, overflows), counted only if ``count``.
    """
    n = x.size
    magic_bits = np.empty(BLOCK, np.uint32)
    magic = magic_bits.view(np.float32)
    inf = np.float32(np.inf)
    underflows = 0
    overflows = 0
    for start in range(0, n, BLOCK):
        stop = min(start + BLOCK, n)
        xs, xbs, outs = x[start:stop], x_bits[start:stop], out[start:stop]
        for j in range(stop - start):
            e = xbs[j] & np.uint32(0x7F800000)  # x's binade, clamped to the format's
            e = lowest if e < lowest else e
            e = highest if e > highest else e
            magic_bits[j] = e + offset
        if count:
            for j in range(stop - start):
                a = abs(xs[j])
                q = (a + magic[j]) - magic[j]
                over = q > max_normal
                overflows += np.int64(over and a < inf)
                underflows += np.int64(q == 0 and a != 0)
                outs[j] = math.copysign(beyond if over else q, xs[j])  # a negative underflow is -0, as a cast
        else:
            for j in range(stop - start):
                a = abs(xs[j])
                q = (a + magic[j]) - magic[j]
                outs[j] = math.copysign(beyond if q > max_normal else q, xs[j])
    return underflows, overflows
