"""Samples into training: the class weights of the loss, the Dataset, a seeded sampler per
epoch (the same order on resume) and the DataLoader with seeded workers.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .folders import Samples
from .images import load_rgb

log = logging.getLogger(__name__)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """w_c = N / (C * n_c) from the training labels; a class absent from training gets 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, len(labels) / (num_classes * np.maximum(counts, 1)), 0.0)
    if (counts == 0).any():
        log.warning("classes %s have no training images; their loss weight is 0", np.flatnonzero(counts == 0).tolist())
    return torch.tensor(weights, dtype=torch.float32)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A seed for one sample in one epoch: augmentations independent of workers and resume point."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ImageDataset(torch.utils.data.Dataset):
    """Images of ``samples`` at ``indices``; items are (tensor, label, sample index).

    Keys may be plain indices or (index, epoch) pairs from :class:`EpochSampler`; the
    augmentation of a sample is seeded by (seed, epoch, index).
    """

    def __init__(self, samples: Samples, indices: Sequence[int], transform: Callable, seed: int = 42) -> None:
        self.samples = samples
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        position, epoch = key if isinstance(key, tuple) else (key, 0)
        index = int(self.indices[position])
        image = load_rgb(self.samples.root / self.samples.paths[index])
        rng = np.random.default_rng(sample_seed(self.seed, epoch, index))
        return self.transform(image, rng), int(self.samples.labels[index]), index


class EpochSampler(torch.utils.data.Sampler):
    """Wraps a sampler and tags each index with the epoch, for per-epoch augmentation seeds.

    The tag travels with the index, so it reaches persistent workers too.
    """

    def __init__(self, sampler: torch.utils.data.Sampler, seed: int = 42) -> None:
        self.sampler = sampler
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Tag the indices of the coming epoch with ``epoch`` (its augmentations' seeds follow it)."""
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        generator = getattr(self.sampler, "generator", None)
        if generator is not None:
            # Shuffle order a function of the epoch alone, so a resumed run draws the same order.
            generator.manual_seed(self.seed + epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.sampler:
            yield int(index), self.epoch

    def __len__(self) -> int:
        return len(self.sampler)


def _seed_worker(worker_id: int) -> None:
    # torch gives each worker its own base seed (from the loader's generator); pass it on to
    # numpy and random so any library code using them differs between workers too.
    import random

    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_loader(
    dataset: ImageDataset,
    batch_size: int,
    *,
    train: bool,
    seed: int = 42,
    num_workers: int = 2,
    device: torch.device | str = "cpu",
    sampler: torch.utils.data.Sampler | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader: seeded shuffling for training, seeded workers, pinned memory on CUDA.

    Call ``loader.sampler.set_epoch(epoch)`` each epoch (an :class:`EpochSampler`).
    """
    if sampler is None:
        if train:
            sampler = torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        else:
            sampler = torch.utils.data.SequentialSampler(dataset)
    epoch_sampler = EpochSampler(sampler, seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=epoch_sampler,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=num_workers > 0,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
        drop_last=False,
    )
