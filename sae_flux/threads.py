"""torch's intra-op thread count for the length of a job (the demo, the interp sweep).

The organism's operations are small: on cores shared with other jobs one thread is faster than
torch's default of one per core (seen while writing the interp sweep: about 2 min vs 20 s per
64-latent SAE run on the same loaded machine; not a controlled benchmark).

Example:
    >>> import torch
    >>> before = torch.get_num_threads()
    >>> with torch_threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` (0: left as it is), restored on exit."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
