"""Random draws indexed by example: the noise of example ``i`` depends on ``(seed, i)`` alone.

A plain ``torch.Generator`` draws a ``(B, *D)`` tensor as one stream, so the noise of an example
depends on the batch it was drawn in: ``--batch-size 16`` and ``64`` give different samples for
the same seed, and so does a run split over processes. :class:`IndexedGenerator` gives every
example its own stream, as EDM's ``StackedRandomGenerator`` does ([Karras22] code), so example
``i`` of a run draws the same numbers in any batch, on any rank.

Examples are grouped in blocks of :attr:`IndexedGenerator.block` consecutive indices, one
``torch.Generator`` per block seeded from ``(seed, block index)`` by NumPy's ``SeedSequence``;
a draw takes the whole block and keeps the rows of the batch. A block has the same stream in
every batch that touches it, so the result is a function of ``(seed, i)`` (and the block size,
fixed by the per-example shape), at the cost of one draw per block instead of one per example.

Every random draw of the samplers and likelihoods goes through :func:`randn` / :func:`rand` /
:func:`randint`, which take either kind of generator (or ``None``).

Refs: [Karras22] code, ``StackedRandomGenerator``; NumPy ``SeedSequence`` (independent streams).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .errors import UserInputError

__all__ = ["MAX_SEED", "Generator", "IndexedGenerator", "block_size_for", "check_seed", "rand",
           "randint", "randn"]

#: Seeds are integers in ``[0, MAX_SEED]`` (torch's ``manual_seed`` takes 64-bit values; 63 bits
#: keep them valid as signed integers in every API and file format).
MAX_SEED = 2**63 - 1
#: Values per block of an :class:`IndexedGenerator` at most (the block is at least one example).
BLOCK_VALUES = 2**16
#: Examples per block at most (small examples: one draw serves this many).
MAX_BLOCK = 64


def check_seed(seed: object, *, what: str = "seed") -> int:
    """``seed`` as an int in ``[0, MAX_SEED]``, else a one-line :class:`UserInputError`."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UserInputError(f"{what} must be an integer in [0, 2**63 - 1], got {seed!r}")
    if not 0 <= int(seed) <= MAX_SEED:
        raise UserInputError(f"{what} must be in [0, 2**63 - 1], got {seed}")
    return int(seed)


def block_size_for(shape: Sequence[int]) -> int:
    """Examples per block for examples of ``shape`` (without the batch dimension): the largest
    power of two up to :data:`MAX_BLOCK` whose block holds at most :data:`BLOCK_VALUES` values
    (1 for examples larger than that)."""
    per_example = max(1, math.prod(int(s) for s in shape))
    block = 1
    while block * 2 <= MAX_BLOCK and block * 2 * per_example <= BLOCK_VALUES:
        block *= 2
    return block


def _stream_seed(seed: int, stream: int, block: int, index: int) -> int:
    """The torch seed of block ``index``: independent of every other (seed, stream, block,
    index)."""
    key = [seed, block, index] if stream == 0 else [seed, block, index, stream]
    state = np.random.SeedSequence(key).generate_state(2, np.uint32)
    return (int(state[0]) << 32 | int(state[1])) & MAX_SEED


class IndexedGenerator:
    """The random streams of the examples ``start, ..., start + n - 1`` of a run with ``seed``.

    A draw of shape ``(m * n, *D)`` gives example ``j`` (of this batch) the rows
    ``j * m .. j * m + m - 1`` (``m = 1``: one row per example; SMC's ``K`` particles per row:
    ``m = K``), each from that example's own stream.

    Args:
        seed: the run's seed, in ``[0, MAX_SEED]``.
        start: the run index of this batch's first example.
        stream: which of the run's independent uses this is (e.g. the data draw and the
            probes of one likelihood run), so that they do not share numbers.
        n: examples in the batch.
        block: examples per block (default: :data:`MAX_BLOCK`); pass :func:`block_size_for`
            of the example shape to keep large examples cheap. Results depend on it, so keep it
            fixed for a run (the samplers derive it from the example shape).
        device: where the generators draw.
    """

    def __init__(self, seed: int, start: int, n: int, *, block: int = MAX_BLOCK,
                 stream: int = 0, device: torch.device | str | None = None) -> None:
        self.seed, self.start, self.n = check_seed(seed), int(start), int(n)
        if self.start < 0 or self.n < 1 or block < 1:
            raise UserInputError(f"need start >= 0, n >= 1 and block >= 1, got {start}, {n}, "
                                 f"{block}")
        self.block, self.stream = int(block), int(stream)
        self.device = torch.device(device if device is not None else "cpu")
        first, last = self.start // self.block, (self.start + self.n - 1) // self.block
        self._generators = [
            torch.Generator(device=self.device).manual_seed(
                _stream_seed(self.seed, self.stream, self.block, b))
            for b in range(first, last + 1)]
        self._offset = self.start - first * self.block  # rows of the first block before ours

    def __len__(self) -> int:
        return self.n

    @property
    def block_generators(self) -> list[torch.Generator]:
        """One generator per block that this batch touches, in order; a draw of ``block * m``
        rows from each, concatenated and passed to :meth:`take`, gives the batch's rows."""
        return self._generators

    def take(self, rows: torch.Tensor, m: int = 1) -> torch.Tensor:
        """This batch's ``n * m`` rows of the concatenated block draws ``rows``."""
        return rows[self._offset * m:(self._offset + self.n) * m]

    def draw(self, fn: Callable[[int, torch.Generator], torch.Tensor]) -> torch.Tensor:
        """This batch's rows of a draw made by ``fn(rows, generator)`` block by block: for
        samplers that take a ``torch.Generator`` (``fn(64, g)`` returns 64 rows drawn from
        ``g``), so that row ``i`` is the same in any batch.

        Example: ``IndexedGenerator(seed, start, n).draw(lambda m, g: data.sample(m,
        generator=g))`` draws examples ``start .. start + n - 1`` of a dataset sampler.
        """
        blocks = [fn(self.block, g) for g in self._generators]
        return self.take(torch.cat(blocks) if len(blocks) > 1 else blocks[0])

    def _draw(self, fn, shape: Sequence[int], **kw) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        if not shape or shape[0] % self.n:
            raise ValueError(f"an IndexedGenerator of {self.n} examples draws (m * {self.n}, ...)"
                             f" shapes, got {shape}")
        m = shape[0] // self.n
        blocks = [fn((self.block * m, *shape[1:]), generator=g, device=self.device, **kw)
                  for g in self._generators]
        return self.take(torch.cat(blocks) if len(blocks) > 1 else blocks[0], m)

    def randn(self, shape: Sequence[int], *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Standard normal draws of ``shape`` (first dimension a multiple of ``n``)."""
        return self._draw(torch.randn, shape, dtype=dtype)

    def rand(self, shape: Sequence[int], *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Uniform draws in ``[0, 1)`` of ``shape`` (first dimension a multiple of ``n``)."""
        return self._draw(torch.rand, shape, dtype=dtype)

    def randint(self, high: int, shape: Sequence[int]) -> torch.Tensor:
        """Integers in ``[0, high)`` of ``shape`` (first dimension a multiple of ``n``)."""
        return self._draw(lambda s, **kw: torch.randint(0, high, s, **kw), shape)


#: What the samplers accept as a source of randomness.
Generator = torch.Generator | IndexedGenerator | None


def _place(x: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    return x if device is None else x.to(device, non_blocking=True)


def randn(shape: Sequence[int], generator: Generator = None, *, dtype: torch.dtype = torch.float32,
          device: torch.device | str | None = None) -> torch.Tensor:
    """``torch.randn(shape)`` from ``generator``: a ``torch.Generator`` (one stream for the whole
    tensor), an :class:`IndexedGenerator` (one per example) or ``None`` (torch's global one)."""
    if isinstance(generator, IndexedGenerator):
        return _place(generator.randn(shape, dtype=dtype), device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)


def rand(shape: Sequence[int], generator: Generator = None, *, dtype: torch.dtype = torch.float32,
         device: torch.device | str | None = None) -> torch.Tensor:
    """``torch.rand(shape)`` from ``generator`` (see :func:`randn`)."""
    if isinstance(generator, IndexedGenerator):
        return _place(generator.rand(shape, dtype=dtype), device)
    return torch.rand(tuple(shape), generator=generator, dtype=dtype, device=device)


def randint(high: int, shape: Sequence[int], generator: Generator = None, *,
            device: torch.device | str | None = None) -> torch.Tensor:
    """``torch.randint(0, high, shape)`` from ``generator`` (see :func:`randn`)."""
    if isinstance(generator, IndexedGenerator):
        return _place(generator.randint(high, shape), device)
    return torch.randint(0, high, tuple(shape), generator=generator, device=device)
