"""The label-free selection signals (utils/signals.py) against hand-computed values, on a collapsed
prediction, and computed over a loader without ever opening a target label."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from utils import criteria as sel
from utils.signals import (
    SignalAccumulator,
    agreement,
    compute_signals,
    diversity,
    mean_entropy,
    sample_pixels,
    soft_neighbourhood_density,
)


def _maps(pixels: list[list[float]], height: int, width: int) -> torch.Tensor:
    """(1, C, H, W) log-probabilities from a row-major list of per-pixel probability vectors."""
    probs = torch.tensor(pixels, dtype=torch.float64).T.reshape(1, -1, height, width)
    return probs.log().float()


def _h(ps: list[float]) -> float:
    return -sum(p * math.log(p) for p in ps if p > 0)


# four pixels of a 2-class map, one of them one-hot (log 0 = -inf must count 0, not NaN)
PIXELS = [[0.5, 0.5], [1.0, 0.0], [0.9, 0.1], [0.2, 0.8]]


def test_entropy_and_diversity_match_hand_values():
    lp = _maps(PIXELS, 2, 2)
    expected_entropy = sum(_h(p) for p in PIXELS) / 4 / math.log(2)  # (1 + 0 + 0.469 + 0.722) / 4
    marginal = [sum(p[c] for p in PIXELS) / 4 for c in range(2)]  # (0.65, 0.35)
    expected_diversity = _h(marginal) / math.log(2)
    assert float(mean_entropy(lp)) == pytest.approx(expected_entropy, abs=1e-6)
    assert float(diversity(lp)) == pytest.approx(expected_diversity, abs=1e-6)
    assert expected_entropy == pytest.approx(0.547731, abs=1e-6) and expected_diversity == pytest.approx(0.934068,
                                                                                                         abs=1e-6)


def test_snd_matches_hand_value():
    # three vectors e1, e2, e1: similarities without the diagonal are row1 (0, 1), row2 (0, 0), row3 (1, 0)
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    t = 0.5
    a = 1 / (1 + math.exp(1 / t))  # softmax of (0, 1/t): (a, 1 - a)
    expected = (2 * _h([a, 1 - a]) + math.log(2)) / 3
    assert float(soft_neighbourhood_density(probs, t)) == pytest.approx(expected, abs=1e-6)
    # L2 normalisation: scaling a vector changes nothing; a batch of sets gives one value per set
    scaled = torch.stack([probs, probs * torch.tensor([[3.0], [0.5], [2.0]])])
    assert soft_neighbourhood_density(scaled, t).tolist() == pytest.approx([expected, expected], abs=1e-6)


def test_accumulator_snd_of_a_small_image_uses_all_its_pixels():
    # 3 pixels < 100 drawn per image: every pixel is in the set, in whatever order, so the value is exact
    lp = _maps([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], 1, 3)
    acc = SignalAccumulator(temperature=0.5)
    acc.update(lp, lp)
    a = 1 / (1 + math.exp(2))
    values = acc.result()
    assert values[sel.SND_MAIN] == pytest.approx((2 * _h([a, 1 - a]) + math.log(2)) / 3, abs=1e-6)
    assert values[sel.SND_AUX] == pytest.approx(values[sel.SND_MAIN])
    assert values[sel.SIGNAL_IMAGES] == 1.0


def test_agreement_of_heads_and_teacher():
    main = _maps([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.6, 0.4]], 2, 2)  # arg-max 0 1 1 0
    aux = _maps([[0.8, 0.2], [0.7, 0.3], [0.1, 0.9], [0.9, 0.1]], 2, 2)  # arg-max 0 0 1 0
    teacher = _maps([[0.2, 0.8], [0.1, 0.9], [0.4, 0.6], [0.3, 0.7]], 2, 2)  # arg-max 1 1 1 1
    assert float(agreement(aux, main)) == 0.75
    acc = SignalAccumulator()
    acc.update(aux, main, teacher)
    acc.update(main, main, main)  # 4 more pixels, all agreeing
    values = acc.result()
    assert values[sel.AGREE_HEADS] == pytest.approx(7 / 8)
    assert values[sel.AGREE_TEACHER] == pytest.approx((2 + 4) / 8)
    with pytest.raises(ValueError, match="every batch or in none"):
        acc.update(aux, main)


@pytest.mark.parametrize("vector", [[0.7, 0.1, 0.1, 0.05, 0.05], [1.0, 0.0, 0.0, 0.0, 0.0]])
def test_a_collapsed_prediction(vector):
    """Every pixel the same vector: entropy may look perfect, SND is at its maximum, the heads agree
    everywhere; only diversity (as low as the entropy) gives the collapse away when it is confident."""
    lp = torch.tensor(vector).log().view(1, 5, 1, 1).expand(3, 5, 8, 8).contiguous()
    acc = SignalAccumulator()  # 100 of the 64 pixels: all 64
    acc.update(lp, lp, lp)
    values = acc.result()
    h = _h(vector) / math.log(5)
    assert values[sel.ENTROPY] == pytest.approx(h, abs=1e-6)
    assert values[sel.DIVERSITY] == pytest.approx(h, abs=1e-6)
    assert values[sel.SND_MAIN] == pytest.approx(math.log(63), abs=1e-5)  # the largest SND of 64 vectors
    assert values[sel.SND_AUX] == pytest.approx(math.log(63), abs=1e-5)
    assert values[sel.AGREE_HEADS] == 1.0 and values[sel.AGREE_TEACHER] == 1.0
    if vector[0] == 1.0:  # one-hot: the best entropy (0) and the worst diversity (0), no NaN
        assert values[sel.ENTROPY] == 0.0 and values[sel.DIVERSITY] == 0.0


def test_snd_pixels_are_seeded():
    torch.manual_seed(3)
    lp = torch.randn(2, 4, 16, 16).log_softmax(1)

    def snd(seed: int) -> float:
        acc = SignalAccumulator(snd_pixels=10, seed=seed)
        acc.update(lp, lp)
        return acc.result()[sel.SND_MAIN]

    torch.manual_seed(99)  # the global RNG does not matter
    first = snd(0)
    assert snd(0) == first
    assert snd(1) != first


@pytest.mark.parametrize("num_pixels", [150, 512 * 1024])  # a permutation, and draws with repeats skipped
def test_sample_pixels_are_distinct_in_range_and_seeded(num_pixels):
    draws = sample_pixels(3, num_pixels, 100, torch.Generator().manual_seed(0))
    assert draws.shape == (3, 100) and draws.dtype == torch.long
    assert all(len(set(row.tolist())) == 100 for row in draws)
    assert int(draws.min()) >= 0 and int(draws.max()) < num_pixels
    assert torch.equal(draws, sample_pixels(3, num_pixels, 100, torch.Generator().manual_seed(0)))
    assert sample_pixels(2, 7, 100, torch.Generator()).shape == (2, 7)  # fewer pixels than asked: all of them


def test_accumulator_refuses_bad_input():
    with pytest.raises(ValueError, match="snd_pixels"):
        SignalAccumulator(snd_pixels=1)
    with pytest.raises(ValueError, match="temperature"):
        SignalAccumulator(temperature=0)
    with pytest.raises(ValueError, match="one shape"):
        SignalAccumulator().update(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 4))
    empty = SignalAccumulator().result()
    assert math.isnan(empty[sel.ENTROPY]) and math.isnan(empty[sel.SND_MAIN])


class _TwoHeads(nn.Module):
    """(aux, main) log-probabilities of two 1x1 convolutions: a stand-in for SegNet."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.aux, self.main = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.aux(x).log_softmax(1), self.main(x).log_softmax(1)


def test_compute_signals_is_reproducible_and_restores_the_mode():
    images = torch.randn(6, 3, 12, 20, generator=torch.Generator().manual_seed(0))
    net, teacher = _TwoHeads(0).train(), _TwoHeads(1).eval()
    loader = DataLoader(images, batch_size=4)
    first = compute_signals(net, loader, "cpu", teacher)
    second = compute_signals(net, loader, "cpu", teacher)
    assert net.training
    assert first.pop(sel.SIGNAL_SECONDS) > 0 and second.pop(sel.SIGNAL_SECONDS) > 0
    assert first == second
    assert set(first) == {sel.ENTROPY, sel.DIVERSITY, sel.SND_MAIN, sel.SND_AUX, sel.AGREE_HEADS, sel.AGREE_TEACHER,
                          sel.SIGNAL_IMAGES}
    assert first[sel.SIGNAL_IMAGES] == 6.0
    # the same as feeding the accumulator by hand
    acc = SignalAccumulator()
    with torch.no_grad():
        for batch in loader:
            aux, main = net.eval()(batch)
            acc.update(aux, main, teacher(batch)[1])
    assert acc.result() == pytest.approx(first)


def test_compute_signals_refuses_labelled_batches():
    loader = [{"image": torch.zeros(1, 3, 4, 4), "label": torch.zeros(1, 4, 4, dtype=torch.long)}]
    with pytest.raises(ValueError, match="labels=False"):
        compute_signals(_TwoHeads(0), loader, "cpu")


def test_signals_on_the_synthetic_target_open_no_label(synthetic_root, monkeypatch):
    """The target subset of train images, through a real SegNet: no label file is read, ever."""
    import dataset.base
    from dataset import build_dataset
    from dataset.holdout import target_signal_dataset
    from model import build_seg_model
    from utils.evaluate import eval_collate

    def no_label(self, index):  # every label is read through its path
        raise AssertionError(f"a target label was looked up: {self.files[index]}")

    monkeypatch.setattr(dataset.base.SegmentationDataset, "label_path", no_label)
    target = build_dataset("cityscapes", synthetic_root / "cityscapes", "train", size=(64, 32), labels=False)
    subset = target_signal_dataset(target, 3, size=(32, 16))
    loader = DataLoader(subset, batch_size=2, collate_fn=eval_collate)
    net = build_seg_model("drn_d_22")
    values = compute_signals(net, loader, "cpu")
    assert values[sel.SIGNAL_IMAGES] == 3.0
    finite = (sel.ENTROPY, sel.DIVERSITY, sel.SND_MAIN, sel.SND_AUX, sel.AGREE_HEADS)
    assert all(math.isfinite(values[k]) for k in finite)
    assert 0 <= values[sel.ENTROPY] <= 1 and 0 <= values[sel.DIVERSITY] <= 1 and 0 <= values[sel.AGREE_HEADS] <= 1
    assert 0 <= values[sel.SND_MAIN] <= math.log(99) + 1e-6


def test_cost_bench_smoke(synthetic_root, tmp_path, capsys):
    """bench/selection.py (the cost table of docs/selection.md) runs and reports every pass."""
    import json

    from bench.selection import main as bench_main

    out = tmp_path / "cost.json"
    rows = bench_main(["--data-dir", str(synthetic_root), "--signal-images", "2", "--holdout", "2", "--repeats", "1",
                       "--batch-size", "2", "--json", str(out)])
    assert [r["pass"].split(" (")[0].split(",")[0] for r in rows] == [
        "val pass", "signals", "signals + teacher agreement", "source hold-out mIoU", "signal arithmetic alone"]
    assert rows[0]["x_val_pass"] == 1.0 and all(r["seconds"] > 0 for r in rows)
    assert json.loads(out.read_text()) == rows
    assert "signals + teacher agreement" in capsys.readouterr().out


def test_source_miou_on_the_hold_out(synthetic_root):
    from dataset import build_dataset
    from dataset.holdout import holdout_datasets
    from model import build_seg_model
    from utils.criteria import SOURCE_MIOU, SOURCE_SECONDS
    from utils.evaluate import eval_collate, evaluate
    from utils.signals import source_miou

    source = build_dataset("gta5", synthetic_root / "gta5", "train", size=(32, 16), random_mirror=True)
    _, held = holdout_datasets(source, 3, size=(32, 16))
    loader = DataLoader(held, batch_size=2, collate_fn=eval_collate)
    net = build_seg_model("drn_d_22").train()
    values = source_miou(net, loader, "cpu")
    assert set(values) == {SOURCE_MIOU, SOURCE_SECONDS} and net.training
    assert values[SOURCE_MIOU] == evaluate(net, loader, "cpu", label_size="input", progress=False)["mIoU"]
    assert 0 <= values[SOURCE_MIOU] <= 1
