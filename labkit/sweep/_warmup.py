"""Imported once by the server process that forks :class:`~labkit.sweep.executors.LocalExecutor` workers.

A process's first run imports torch (about 2 s) and, when it sizes the model on PyTorch's ``meta`` device,
another ~800 modules (sympy, torch._dynamo, ...; about 2.5 s more). Doing both here, once, lets every worker
forked from this server start in milliseconds instead of paying them again. Nothing here touches CUDA, so
forked workers can still initialise it.
"""

from labkit.config import RunConfig
from labkit.train import estimate_memory

estimate_memory(RunConfig(width=8, heads=1, depth=1, seq_len=8), vocab_size=8)
