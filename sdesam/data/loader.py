"""``DeviceLoader``: the whole dataset resident on one device, batches made there.

In the spirit of airbench: the uint8 images are copied to ``device`` once; each epoch
draws one random plan on the CPU and every batch is gathered, augmented and normalised
on the device with a few whole-batch tensor operations (no per-image Python loop).

Randomness. One CPU ``torch.Generator`` drives everything, in this order at the start of
each epoch: ``randperm(N)`` (if ``shuffle``), then the crop offsets
``randint(0, 2·padding+1, (N, 2))`` and the flip bits ``randint(0, 2, (N,))`` (if
``augment``), indexed by position in the epoch's order. The batches are therefore a
deterministic function of the seed, identical on CPU and CUDA, and exactly resumable
from ``state_dict()`` (epoch, position, and the generator state at the epoch's start).

Augmentation (``augment=True``): the paper's pad-4 random crop + random horizontal flip,
as torchvision's ``RandomCrop(32, padding=4)`` then ``RandomHorizontalFlip()``: zero
padding (black pixels, padded before normalisation), a crop offset uniform on
{0, …, 2·padding} on each axis, and a flip with probability 1/2.

Data parallelism: with ``world_size`` W, the global batch is ``W · batch_size``; all
ranks draw the same plan (same seed), and rank r takes the r-th contiguous slice of each
global batch. Concatenating the ranks' batches in rank order gives exactly the batches
of one process with batch size ``W · batch_size``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_int
from .datasets import ImageDataset

__all__ = ["DeviceLoader", "crop_and_flip"]


def crop_and_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor,
                  padding: int) -> torch.Tensor:
    """Zero-pad by ``padding``, crop back to the original size, optionally mirror.

    Args:
        images: (B, C, H, W), any dtype (uint8 in the loader).
        offsets: int64 (B, 2), the crop's top-left corner (row, column) in the padded
            image, each in 0..2·padding.
        flips: bool (B,), mirror left-right after cropping.
        padding: pixels of zeros added on every side.

    Returns:
        (B, C, H, W) of ``images``' dtype: ``out[b, :, i, j] = padded[b, :, r+i, c+j']``
        with (r, c) = offsets[b] and j' = W-1-j when flips[b], else j.
    """
    B, C, H, W = images.shape
    Hp, Wp = H + 2 * padding, W + 2 * padding
    padded = F.pad(images, (padding,) * 4).reshape(B, C, Hp * Wp)
    device = images.device
    rows = offsets[:, 0, None] + torch.arange(H, device=device)  # (B, H)
    j = torch.arange(W, device=device)
    cols = offsets[:, 1, None] + torch.where(flips[:, None], W - 1 - j, j)  # (B, W)
    # one gather of each output pixel's flat position in the padded image (shared by channels)
    source = (rows[:, :, None] * Wp + cols[:, None, :]).reshape(B, 1, H * W)
    return padded.gather(2, source.expand(B, C, H * W)).reshape(B, C, H, W)


class DeviceLoader:
    """Iterate over an :class:`ImageDataset` in normalised float batches made on ``device``.

    Args:
        dataset: the split to serve (uint8 images, copied once to ``device``).
        batch_size: examples per batch *per rank* (the global batch is
            ``batch_size * world_size``).
        shuffle: draw a new random order each epoch (else the stored order).
        augment: pad-``padding`` random crop + horizontal flip (see the module docstring).
        padding: crop padding in pixels (paper: 4).
        drop_last: drop the final incomplete global batch. When kept with
            ``world_size > 1`` it is split as ``torch.tensor_split`` would (sizes differ by
            at most one; a rank's share can be empty), so every rank yields the same number
            of batches.
        generator: a CPU ``torch.Generator`` (advanced in place) or an int seed.
        device: where the data lives and batches are made.
        dtype: floating dtype of the yielded images.
        channels_last: yield images in ``torch.channels_last`` memory format.
        normalize: apply ``(pixel/255 - mean) / std`` with the dataset's mean/std; else
            yield pixel/255.
        rank, world_size: this process's place in data-parallel training.

    Iteration yields ``(images, labels)``: ``images`` of shape (b, C, H, W) and ``dtype``,
    ``labels`` int64 (b,), both on ``device``; ``b = batch_size`` except possibly in the last
    batch. Each ``for`` loop runs from the next unserved batch to the end of its epoch: a
    whole epoch normally, the rest of the epoch after ``load_state_dict()`` or after a loop
    left early with ``break``. Use one iterator at a time: starting a new one, or loading
    a state, invalidates the previous iterator.
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, *, shuffle: bool = True,
                 augment: bool = False, padding: int = 4, drop_last: bool = False,
                 generator: torch.Generator | int = 0, device="cpu",
                 dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 normalize: bool = True, rank: int = 0, world_size: int = 1):
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.world_size = check_int("world_size", world_size, minimum=1)
        self.rank = check_int("rank", rank, minimum=0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be < world_size={world_size}, got rank={rank}")
        self.padding = check_int("padding", padding, minimum=0)
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got dtype={dtype}")
        if isinstance(generator, torch.Generator):
            if generator.device.type != "cpu":
                raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
            self.generator = generator
        else:
            self.generator = torch.Generator().manual_seed(check_int("generator", generator, minimum=0))
        self.shuffle, self.augment, self.drop_last = bool(shuffle), bool(augment), bool(drop_last)
        self.device, self.dtype, self.channels_last = torch.device(device), dtype, bool(channels_last)
        self.name = f"{dataset.name}/{dataset.split}"
        self.num_examples = len(dataset)
        if self.num_examples == 0:
            raise ValueError(f"{self.name} is empty")
        global_batch = self.batch_size * self.world_size
        if self.drop_last and self.num_examples < global_batch:
            raise ValueError(
                f"{self.name} has {self.num_examples} examples, fewer than one global batch of "
                f"{global_batch} (batch_size * world_size) with drop_last=True"
            )
        self._images = dataset.images.to(self.device)
        self._labels = dataset.labels.to(self.device)
        # arithmetic in float32, or float64 when that is the output dtype
        self._compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        self._mean = self._std = None
        if normalize:
            stats = dict(dtype=self._compute_dtype, device=self.device)
            self._mean = torch.tensor(dataset.mean, **stats).view(1, -1, 1, 1)
            self._std = torch.tensor(dataset.std, **stats).view(1, -1, 1, 1)
        self._epoch = 0
        self._position = 0  # batches of the current epoch already yielded (< len(self))
        self._plan = None  # (order, offsets, flips) of the current epoch, on the device;
        # None until the epoch's first batch is requested
        self._epoch_start_state = None  # generator state before the current plan was drawn
        self._iterator_id = 0

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        global_batch = self.batch_size * self.world_size
        if self.drop_last:
            return self.num_examples // global_batch
        return -(-self.num_examples // global_batch)

    @property
    def epoch(self) -> int:
        """Index (from 0) of the epoch the next batch belongs to: after a whole epoch has
        been served it is the number of epochs completed."""
        return self._epoch

    def _draw_plan(self) -> None:
        self._epoch_start_state = self.generator.get_state()
        n, g = self.num_examples, self.generator
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        offsets = flips = None
        if self.augment:
            offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=g).to(self.device)
            flips = torch.randint(0, 2, (n,), generator=g).bool().to(self.device)
        self._plan = (order.to(self.device), offsets, flips)

    def _slice(self, k: int) -> slice:
        """Positions (in the epoch's order) of this rank's share of global batch k."""
        global_batch = self.batch_size * self.world_size
        start = k * global_batch
        size = min(global_batch, self.num_examples - start)
        base, extra = divmod(size, self.world_size)  # torch.tensor_split's rule
        first = start + self.rank * base + min(self.rank, extra)
        return slice(first, first + base + (self.rank < extra))

    def _batch(self, k: int):
        order, offsets, flips = self._plan
        where = self._slice(k)
        index = order[where]
        images = self._images[index]
        if self.augment:
            images = crop_and_flip(images, offsets[where], flips[where], self.padding)
        x = images.to(self._compute_dtype) / 255
        if self._mean is not None:
            x = (x - self._mean) / self._std
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self._labels[index]

    def __iter__(self):
        self._iterator_id += 1
        if self._plan is None:
            self._draw_plan()
        return self._run(self._iterator_id)

    def _run(self, iterator_id: int):
        for k in range(self._position, len(self)):
            if iterator_id != self._iterator_id:
                raise RuntimeError(
                    f"DeviceLoader({self.name}): this iterator was superseded by a newer one "
                    "or by load_state_dict(); start a new `for` loop"
                )
            batch = self._batch(k)
            self._position = k + 1
            if self._position == len(self):  # epoch done: the next batch opens the next one
                self._epoch, self._position, self._plan = self._epoch + 1, 0, None
            yield batch

    def state_dict(self) -> dict:
        """Everything needed to resume exactly here: epoch, position, generator state at
        the epoch's start, and the settings that must match on resume."""
        state = self._epoch_start_state if self._plan is not None else self.generator.get_state()
        return {
            "epoch": self._epoch,
            "position": self._position,
            "generator_state": state.clone(),
            **self._settings(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict`; the next batches are bit-identical to those the
        saved loader would have yielded. Raises ValueError when the settings differ."""
        for key, value in self._settings().items():
            if state.get(key) != value:
                raise ValueError(
                    f"DeviceLoader({self.name}): cannot resume, state has {key}={state.get(key)!r} "
                    f"but this loader has {key}={value!r}"
                )
        self.generator.set_state(state["generator_state"])
        self._epoch = int(state["epoch"])
        self._position = int(state["position"])
        self._plan = None  # redrawn from the restored generator state on the next iteration
        self._iterator_id += 1

    def _settings(self) -> dict:
        return {
            "num_examples": self.num_examples, "batch_size": self.batch_size,
            "world_size": self.world_size, "shuffle": self.shuffle, "augment": self.augment,
            "padding": self.padding, "drop_last": self.drop_last,
        }
