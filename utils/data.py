"""The training data of a run: the source and target datasets, and endless batch streams that resume exactly."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from dataset import build_dataset
from dataset.holdout import holdout_datasets, target_signal_dataset
from dataset.sampling import StreamSampler, seed_worker
from utils.config import TrainConfig
from utils.errors import ConfigError, DatasetError
from utils.runtime import DistInfo, uses_cuda


def build_datasets(cfg: TrainConfig, info: DistInfo,
                   need_target: bool) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """(source, target, holdout): the source training draws from, without its `--source-holdout` frames; the
    target when `need_target`; those held-out source frames for `sel/source_mIoU` (None without a hold-out).

    Every rank holds out the same frames (a hash of their names: `dataset.holdout`), so no rank's sampler
    ever draws one. `DatasetError`/`ConfigError` before any training.
    """
    source = build_dataset(cfg.source, cfg.data_dir, cfg.source_split, list_path=cfg.data_list,
                           size=cfg.input_size, labels=True, random_mirror=cfg.random_mirror,
                           random_scale=cfg.random_scale, exclude=cfg.exclude)
    holdout = None
    if cfg.source_holdout:
        try:
            source, holdout = holdout_datasets(source, cfg.source_holdout, size=cfg.input_size)
        except DatasetError as err:
            raise ConfigError(f"--source-holdout {cfg.source_holdout}: {err}") from err
    if len(source) < cfg.batch_size * info.world_size:
        held = f" once the {cfg.source_holdout} held-out frames are taken out" if holdout is not None else ""
        raise ConfigError(f"--batch-size {cfg.batch_size}: the source list has only {len(source)} images{held}")
    if not need_target:
        return source, None, holdout
    target = build_dataset(cfg.target, cfg.data_dir_target, cfg.target_split, list_path=cfg.data_list_target,
                           size=cfg.input_size_target, labels=False, random_mirror=cfg.random_mirror,
                           random_scale=cfg.random_scale)
    if len(target) < cfg.batch_size * info.world_size:
        raise ConfigError(f"--batch-size {cfg.batch_size}: the target list has only {len(target)} images")
    return source, target, holdout


def val_dataset(cfg: TrainConfig) -> Dataset | None:
    """The target's val split for --eval-every, built (and so checked) before training starts; None with
    `--val-split none` (a target without labels)."""
    if cfg.val_split is None:
        return None
    return build_dataset(cfg.target, cfg.data_dir_target, cfg.val_split, labels=True, size=cfg.eval_size,
                         label_size="full")


def signal_dataset(cfg: TrainConfig, target: Dataset | None) -> Dataset | None:
    """The fixed subset of `--signal-images` target train images the label-free signals are computed on
    (`dataset.holdout.target_signal_dataset`: no labels, never val), at the target's input size; from
    `target` when the run built it, else from the target's train split. None with `--signal-images 0`."""
    if not cfg.signal_images:
        return None
    if target is None:
        target = build_dataset(cfg.target, cfg.data_dir_target, cfg.target_split, list_path=cfg.data_list_target,
                               size=cfg.input_size_target, labels=False)
    try:
        return target_signal_dataset(target, cfg.signal_images, size=cfg.input_size_target)
    except ConfigError as err:
        raise ConfigError(f"--target-split {cfg.target_split}: {err} (or --signal-images 0)") from err


def stream(dataset: Dataset, cfg: TrainConfig, info: DistInfo, start: int, seed: int) -> Iterator[dict]:
    """Endless batches of `dataset` for this rank, continuing after `start` samples drawn per rank."""
    # Each sample carries its own augmentation seed (a function of seed, epoch, position), so flips and
    # crops neither depend on the worker count nor restart on --resume. The loader's generator only
    # seeds the workers' NumPy/random (seed_worker); derive it from (seed, start) without collisions.
    sampler = StreamSampler(len(dataset), seed, start=start, rank=info.rank, world_size=info.world_size,
                            with_seeds=True)
    worker_seed = int(np.random.SeedSequence([seed, start, info.rank]).generate_state(1)[0])
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        drop_last=True, pin_memory=uses_cuda(cfg.device), worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(worker_seed),
                        persistent_workers=cfg.num_workers > 0)
    return iter(loader)


def build_streams(cfg: TrainConfig, info: DistInfo, samples_drawn: int, datasets: tuple[Dataset, Dataset | None],
                  need_target: bool) -> tuple[Iterator[dict], Iterator[dict] | None]:
    """Endless source (and, when `need_target`, target) batch streams that continue after `samples_drawn`."""
    source, target = datasets
    src = stream(source, cfg, info, samples_drawn, cfg.random_seed)
    return src, stream(target, cfg, info, samples_drawn, cfg.random_seed + 1) if need_target else None
