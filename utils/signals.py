"""Label-free checkpoint-selection signals of a segmentation net's outputs (docs/selection.md).

Every function is a pure function of log-probabilities (N, C, H, W) and stays on their device; the
`SignalAccumulator` sums them batch by batch over a validation pass (one `.item()` at the end), and
`compute_signals` runs a net over a loader of unlabelled images to fill one. The log keys and each
signal's direction (higher or lower is better) live in `utils.criteria`.

- **entropy**: mean over pixels of the main head's prediction entropy, divided by log C (0: every
  pixel one-hot, 1: every pixel uniform). Lower is better (confident predictions); a collapsed model
  that predicts one class everywhere with certainty scores the best value, 0.
- **diversity**: entropy of the main head's mean class distribution over every pixel of the subset,
  divided by log C. Higher is better; a collapsed model scores 0. Kept apart from `entropy`, which
  alone rewards a collapse (information-maximisation methods add the two).
- **SND** (soft neighbourhood density, Saito et al., "Tune it the right way: unsupervised validation of
  domain adaptation via soft neighborhood density", ICCV 2021): in each image, K pixels (100, drawn
  with a fixed seed) of a head's softmax, each L2-normalised; their cosine similarity matrix without
  its diagonal; a softmax of each row at temperature 0.05; the mean entropy of those rows; the mean
  over images. Higher is better (the paper's choice: predictions that sit in dense neighbourhoods).
  Its maximum, log(K - 1), is reached when all K vectors are equal, so a collapsed model scores the
  best SND too. The authors' segmentation code draws 100 pixels per image of both heads as here, but
  keeps each pixel's similarity to itself in its row; the paper's definition (followed here) leaves it
  out.
- **agreement** between the aux and main heads, and between the student's and the teacher's main
  heads: the fraction of pixels whose arg-max classes agree. Higher is better (a heuristic: a
  collapsed model whose heads collapse alike agrees everywhere).
- **source mIoU** on source frames training never draws (`dataset.holdout`), from the confusion
  matrix of `utils.evaluate`. Higher is better; needs source labels only.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.criteria import (
    AGREE_HEADS,
    AGREE_TEACHER,
    DIVERSITY,
    ENTROPY,
    SIGNAL_IMAGES,
    SIGNAL_SECONDS,
    SND_AUX,
    SND_MAIN,
    SOURCE_MIOU,
    SOURCE_SECONDS,
)
from utils.evaluate import evaluate
from utils.runtime import autocast, unwrap

SND_PIXELS = 100  # pixels drawn per image (Saito et al.'s segmentation code)
SND_TEMPERATURE = 0.05  # their temperature
SND_SEED = 0  # the pixels' generator seed: the same pixels at every validation


def _float_log_probs(log_probs: Tensor) -> Tensor:
    # float32 (autocast may hand bf16/fp16), and -inf clamped so that 0 * log 0 counts 0, not NaN
    log_probs = log_probs.float()
    return log_probs.clamp(min=torch.finfo(torch.float32).min)


def _log_classes(num_classes: int) -> float:
    return math.log(num_classes) if num_classes > 1 else 1.0  # one class: every entropy is 0 anyway


def pixel_entropy(log_probs: Tensor) -> Tensor:
    """Per-pixel prediction entropy divided by log C, (N, H, W) from (N, C, H, W) log-probabilities."""
    lp = _float_log_probs(log_probs)
    return -(lp.exp() * lp).sum(dim=1) / _log_classes(lp.shape[1])


def mean_entropy(log_probs: Tensor) -> Tensor:
    """The mean over every pixel of `pixel_entropy` (a 0-dim tensor in [0, 1])."""
    return pixel_entropy(log_probs).mean()


def class_marginal(log_probs: Tensor) -> Tensor:
    """The mean predicted class distribution (C,) over every pixel of (N, C, H, W) log-probabilities."""
    return log_probs.float().exp().mean(dim=(0, 2, 3))


def distribution_entropy(probs: Tensor) -> Tensor:
    """Entropy of one class distribution (C,) divided by log C; `probs` is renormalised to sum to 1."""
    p = probs.float() / probs.float().sum()
    return -torch.special.xlogy(p, p).sum() / _log_classes(p.numel())


def diversity(log_probs: Tensor) -> Tensor:
    """Class-marginal diversity of (N, C, H, W) log-probabilities: `distribution_entropy(class_marginal(.))`."""
    return distribution_entropy(class_marginal(log_probs))


def _distinct_draws(num_pixels: int, k: int, generator: torch.Generator) -> list[int]:
    """k distinct indices of range(num_pixels), uniformly: uniform draws, repeats skipped (k << num_pixels)."""
    chosen: dict[int, None] = {}  # insertion-ordered set
    while len(chosen) < k:
        for i in torch.randint(num_pixels, (2 * (k - len(chosen)),), generator=generator).tolist():
            chosen.setdefault(i)
            if len(chosen) == k:
                break
    return list(chosen)


def sample_pixels(num_images: int, num_pixels: int, count: int, generator: torch.Generator) -> Tensor:
    """(num_images, min(count, num_pixels)) flat pixel indices, drawn without replacement per image (CPU).

    The draws depend on `generator` alone. Skipping repeats of uniform draws costs O(count) per image,
    where a permutation of a 1024x512 map would cost 13 ms on the CPU, more than a GPU's forward.
    """
    k = min(count, num_pixels)
    if num_pixels <= 4 * k:
        return torch.stack([torch.randperm(num_pixels, generator=generator)[:k] for _ in range(num_images)])
    return torch.tensor([_distinct_draws(num_pixels, k, generator) for _ in range(num_images)], dtype=torch.long)


def gather_pixels(log_probs: Tensor, pixels: Tensor) -> Tensor:
    """The probability vectors (N, K, C) at flat pixel indices (N, K) of (N, C, H, W) log-probabilities."""
    n, c = log_probs.shape[:2]
    flat = log_probs.reshape(n, c, -1)
    index = pixels.to(flat.device).unsqueeze(1).expand(n, c, pixels.shape[1])
    return flat.gather(2, index).float().exp().transpose(1, 2)


def soft_neighbourhood_density(probs: Tensor, temperature: float = SND_TEMPERATURE) -> Tensor:
    """SND of each set of K >= 2 probability vectors (..., K, C): one value per set (...).

    Saito et al. (ICCV 2021): the vectors L2-normalised, their cosine similarity matrix without its
    diagonal (K, K - 1), a softmax of each row of similarity / `temperature`, and the mean over rows of
    that softmax's entropy. Between 0 and log(K - 1), which K equal vectors reach.
    """
    k = probs.shape[-2]
    if k < 2:
        raise ValueError(f"SND needs at least 2 vectors per set, got {k}")
    feats = F.normalize(probs.float(), dim=-1)
    sim = feats @ feats.transpose(-1, -2)
    off_diagonal = ~torch.eye(k, dtype=torch.bool, device=sim.device)
    sim = sim[..., off_diagonal].reshape(*sim.shape[:-2], k, k - 1)
    log_p = F.log_softmax(sim / temperature, dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1).mean(dim=-1)


def agreement(log_probs_a: Tensor, log_probs_b: Tensor) -> Tensor:
    """Fraction (0-dim) of pixels whose arg-max class is the same in two (N, C, H, W) score maps."""
    if log_probs_a.shape != log_probs_b.shape:
        raise ValueError(f"agreement of maps of different shapes {tuple(log_probs_a.shape)} "
                         f"and {tuple(log_probs_b.shape)}")
    return (log_probs_a.argmax(dim=1) == log_probs_b.argmax(dim=1)).float().mean()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SignalAccumulator:
    """Sums the label-free signals over a validation pass, one batch of net outputs at a time.

    `update(aux, main, teacher=None)` takes a batch's (N, C, H, W) log-probabilities of the net's two
    heads (and of the teacher's main head, in every batch or in none); `result()` returns
    {ENTROPY, DIVERSITY, SND_MAIN, SND_AUX, AGREE_HEADS, [AGREE_TEACHER], SIGNAL_IMAGES} (keys of
    `utils.criteria`) as floats, every mean taken over all pixels (entropy, diversity, agreement) or
    all images (SND) seen. Totals stay on the outputs' device. The SND pixels of the i-th image are
    the same in every pass of a fresh accumulator with the same `seed`, whatever the device (they are
    drawn on the CPU). `seconds` is the time spent in `update` and `result`.
    """

    def __init__(self, *, snd_pixels: int = SND_PIXELS, temperature: float = SND_TEMPERATURE,
                 seed: int = SND_SEED) -> None:
        if snd_pixels < 2:
            raise ValueError(f"snd_pixels must be >= 2, got {snd_pixels}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.snd_pixels, self.temperature = snd_pixels, temperature
        self._generator = torch.Generator().manual_seed(seed)
        self._totals: dict[str, Tensor] = {}
        self._class_mass: Tensor | None = None
        self._with_teacher: bool | None = None
        self.images = 0
        self.pixels = 0
        self.seconds = 0.0

    def _add(self, name: str, value: Tensor) -> None:
        value = value.double()  # totals over a whole split: float64, so that no pixel is rounded away
        self._totals[name] = self._totals[name] + value if name in self._totals else value

    @torch.no_grad()
    def update(self, aux: Tensor, main: Tensor, teacher: Tensor | None = None) -> None:
        """Add one batch: the net's aux and main log-probabilities, optionally the teacher's main ones."""
        if aux.ndim != 4 or aux.shape != main.shape:
            raise ValueError(f"expected aux and main log-probabilities of one shape (N, C, H, W), got "
                             f"{tuple(aux.shape)} and {tuple(main.shape)}")
        if self._with_teacher is not None and self._with_teacher != (teacher is not None):
            raise ValueError("give the teacher's log-probabilities in every batch or in none")
        self._with_teacher = teacher is not None
        start = time.perf_counter()
        n, c, h, w = main.shape
        pixels = n * h * w
        self._add("entropy", pixel_entropy(main).sum())
        mass = main.float().exp().sum(dim=(0, 2, 3)).double()
        self._class_mass = mass if self._class_mass is None else self._class_mass + mass
        self._add("agree_heads", agreement(aux, main) * pixels)
        if teacher is not None:
            self._add("agree_teacher", agreement(main, teacher) * pixels)
        if h * w >= 2:
            chosen = sample_pixels(n, h * w, self.snd_pixels, self._generator)
            self._add("snd_main", soft_neighbourhood_density(gather_pixels(main, chosen), self.temperature).sum())
            self._add("snd_aux", soft_neighbourhood_density(gather_pixels(aux, chosen), self.temperature).sum())
            self._add("snd_images", torch.tensor(float(n), device=main.device))
        self.images += n
        self.pixels += pixels
        _sync(main.device)
        self.seconds += time.perf_counter() - start

    def result(self) -> dict[str, float]:
        """The signals of every batch so far (NaN for a signal that saw nothing)."""
        start = time.perf_counter()
        nan = math.nan
        totals = {k: float(v) for k, v in self._totals.items()}  # the pass's one device-to-host copy
        per_pixel = (lambda k: totals[k] / self.pixels) if self.pixels else (lambda k: nan)
        snd_images = totals.get("snd_images", 0.0)
        values = {
            ENTROPY: per_pixel("entropy"),
            DIVERSITY: float(distribution_entropy(self._class_mass)) if self._class_mass is not None else nan,
            SND_MAIN: totals["snd_main"] / snd_images if snd_images else nan,
            SND_AUX: totals["snd_aux"] / snd_images if snd_images else nan,
            AGREE_HEADS: per_pixel("agree_heads"),
        }
        if self._with_teacher:
            values[AGREE_TEACHER] = per_pixel("agree_teacher")
        values[SIGNAL_IMAGES] = float(self.images)
        self.seconds += time.perf_counter() - start
        return values


def _images_of(batch) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if "label" in batch:  # the signals must never see a target label: build the subset with labels=False
        raise ValueError("compute_signals: the loader yields labels; the target subset must be built "
                         "with labels=False")
    return batch["image"]


@torch.no_grad()
def compute_signals(net: nn.Module, loader: Iterable, device: torch.device | str, teacher: nn.Module | None = None,
                    *, snd_pixels: int = SND_PIXELS, temperature: float = SND_TEMPERATURE, seed: int = SND_SEED,
                    amp: str = "off", channels_last: bool = False) -> dict[str, float]:
    """The label-free signals of `net` (and its agreement with `teacher`) over a loader of unlabelled images.

    `loader` yields image batches (N, 3, H, W), or dicts whose "image" holds them and which carry no
    "label". The net's `(aux, main)` log-probabilities at the input size feed a `SignalAccumulator`.
    Returns its `result()` plus SIGNAL_SECONDS, the wall-clock seconds of the whole pass (loading,
    forwards and signals). The net is put back in the mode it was in.
    """
    device = torch.device(device)
    model = unwrap(net)
    was_training = model.training
    model.eval()
    acc = SignalAccumulator(snd_pixels=snd_pixels, temperature=temperature, seed=seed)
    start = time.perf_counter()
    try:
        for batch in loader:
            images = _images_of(batch).to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                aux, main = model(images)
                teacher_main = unwrap(teacher)(images)[1] if teacher is not None else None
            acc.update(aux, main, teacher_main)
    finally:
        model.train(was_training)
    values = acc.result()
    _sync(device)
    values[SIGNAL_SECONDS] = time.perf_counter() - start
    return values


def source_miou(net: nn.Module, loader: Iterable[dict], device: torch.device | str, *, num_classes: int = 19,
                amp: str = "off", channels_last: bool = False) -> dict[str, float]:
    """{SOURCE_MIOU, SOURCE_SECONDS}: the main head's mIoU (`utils.evaluate.evaluate`, labels at the input
    size) on the source hold-out's loader (`dataset.holdout.holdout_datasets`), and the pass's seconds."""
    result = evaluate(unwrap(net), loader, device, num_classes=num_classes, label_size="input", amp=amp,
                      channels_last=channels_last, progress=False)
    return {SOURCE_MIOU: result["mIoU"], SOURCE_SECONDS: result["seconds"]}
