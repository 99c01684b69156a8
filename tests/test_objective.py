"""The objective through a real training step: each weight multiplies its own term, the knobs reach the
terms, the discriminators learn source as 0 and target as 1, and the term forms (ours and the original's)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model import Discriminator, build_seg_model
from utils.config import TrainConfig, parse_config
from utils.loss import kl_distill, pseudo_label_loss
from utils.objective import (
    ADAPTATION,
    PARADIGMS,
    Knobs,
    TermInputs,
    build_objective,
    kl_as_original,
    knobs_of,
    mse,
    mse_as_original,
    pseudo,
)
from utils.settings import declared
from utils.steps import TrainStep

# distinct weights, so that swapping any two, or dropping one, changes the total
WEIGHTS = dict(lambda_seg=0.3, lambda_adv_aux=0.7, lambda_adv_main=1.3, lambda_kl=1.9, lambda_mse=2.3,
               lambda_pseudo=0.55, lambda_target=1.7)
PHASES = [("adapt", ADAPTATION[0])] + [(f"{name}/{spec.name}", spec)
                                      for name, specs in PARADIGMS.items() for spec in specs]


def _batch(seed: int, labels: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {"image": torch.randn(2, 3, 32, 32, generator=g)}
    if labels:
        batch["label"] = torch.randint(0, 3, (2, 32, 32), generator=g)
    return batch


def _nets():
    torch.manual_seed(0)
    net, teacher = build_seg_model("drn_d_22", num_classes=3), build_seg_model("drn_d_22", num_classes=3)
    discs = (Discriminator(3), Discriminator(3))
    net.eval()  # so that the test's own forward passes see what the step saw
    return net, teacher, discs


def _step(spec, **knobs) -> tuple[TrainStep, torch.nn.Module, torch.nn.Module, tuple]:
    net, teacher, discs = _nets()
    knobs = Knobs(**{**WEIGHTS, **knobs})
    step = TrainStep(net, discs, build_objective(spec, knobs, num_classes=3), torch.device("cpu"), teacher=teacher)
    return step, net, teacher, discs


def _expected_total(v: dict, w: dict, distill_src: bool, distill_tgt: bool) -> float:
    """The objective written out by hand (docs/method.md#total-objective), from the logged terms."""
    def distill(suffix: str) -> float:
        return (w["lambda_kl"] * (v[f"kl_main_{suffix}"] + w["lambda_seg"] * v[f"kl_aux_{suffix}"])
                + w["lambda_mse"] * v[f"mse_{suffix}"] + w["lambda_pseudo"] * v[f"pseudo_{suffix}"])

    source = v["seg_main_src"] + w["lambda_seg"] * v["seg_aux_src"]
    target = w["lambda_adv_aux"] * v["adv_aux_tgt"] + w["lambda_adv_main"] * v["adv_main_tgt"]
    if distill_src:
        source += distill("src")
    if distill_tgt:
        target += w["lambda_target"] * distill("tgt")
    return source + target


@pytest.mark.parametrize("name, spec", PHASES, ids=[n for n, _ in PHASES])
@pytest.mark.parametrize("knobs", [{}, {"lambda_target": 0.4, "kd_temperature": 2.0, "pseudo_threshold": 0.4}],
                         ids=["weights", "target-distill+temperature+threshold"])
def test_total_is_each_weight_times_its_own_term(name, spec, knobs):
    step, *_ = _step(spec, **knobs)
    values = {k: float(v) for k, v in step([_batch(0)], [_batch(1, labels=False)]).items()}
    distill_src, distill_tgt = "kl_main" in spec.source, "kl_main" in spec.target
    assert ("kl_main_src" in values) is distill_src and ("kl_main_tgt" in values) is distill_tgt
    assert all(v != 0 and math.isfinite(v) for v in values.values())
    expected = _expected_total(values, {**WEIGHTS, **knobs}, distill_src, distill_tgt)
    assert values["total"] == pytest.approx(expected, rel=1e-5)


def test_temperature_and_threshold_reach_the_terms():
    step, net, teacher, _ = _step(PARADIGMS["target"][0], kd_temperature=3.0, pseudo_threshold=0.4)
    source, target = _batch(0), _batch(1, labels=False)
    values = step([source], [target])
    with torch.no_grad():
        (s_aux, s_main), (t_aux, t_main) = net(target["image"]), teacher(target["image"])
    assert float(values["kl_main_tgt"]) == pytest.approx(float(kl_distill(s_main, t_main, 3.0)), rel=1e-5)
    assert float(values["kl_aux_tgt"]) == pytest.approx(float(kl_distill(s_aux, t_aux, 3.0)), rel=1e-5)
    by_hand = pseudo_label_loss(s_main, t_main, threshold=0.4)
    assert float(values["pseudo_tgt"]) == pytest.approx(float(by_hand), rel=1e-5)
    assert float(by_hand) != pytest.approx(float(pseudo_label_loss(s_main, t_main)), rel=1e-3)  # it mattered


def test_discriminators_learn_source_as_0_target_as_1_and_nothing_from_the_generator_pass():
    step, net, _, discs = _step(ADAPTATION[0])
    source, target = _batch(0), _batch(1, labels=False)
    step([source], [target])
    with torch.no_grad():
        pred_s, pred_t = net(source["image"]), net(target["image"])
    for level, disc in enumerate(discs):
        d_s, d_t = disc(pred_s[level].exp()), disc(pred_t[level].exp())
        # the discriminator's loss alone: source -> 0, target -> 1, each halved
        loss = (F.binary_cross_entropy_with_logits(d_s, torch.zeros_like(d_s))
                + F.binary_cross_entropy_with_logits(d_t, torch.ones_like(d_t))) / 2
        expected = torch.autograd.grad(loss, list(disc.parameters()))
        for p, g in zip(disc.parameters(), expected):
            assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-7)


def _hand_case():
    # two classes, one pixel: student (0.8, 0.2), teacher (0.5, 0.5) on the aux head; main head as given
    s = torch.tensor([0.8, 0.2]).log().view(1, 2, 1, 1)
    t = torch.tensor([0.5, 0.5]).log().view(1, 2, 1, 1)
    return TermInputs(student=(s, s), teacher=(t, t), knobs=Knobs())


def test_mse_compares_the_aux_heads_class_probabilities():
    x = _hand_case()
    assert float(mse(x)) == pytest.approx(((0.8 - 0.5) ** 2 + (0.2 - 0.5) ** 2) / 2)


def test_original_objective_has_a_zero_kl_and_the_mse_of_log_probabilities():
    x = _hand_case()
    assert float(kl_as_original(x)) == 0.0
    by_hand = ((math.log(0.8) - math.log(0.5)) ** 2 + (math.log(0.2) - math.log(0.5)) ** 2) / 2
    assert float(mse_as_original(x)) == pytest.approx(by_hand)
    original = build_objective(PARADIGMS["both"][0], Knobs(form="original"))
    forms = {term.name: term.fn for term in original.source}
    assert forms["kl_main"] is kl_as_original and forms["kl_aux"] is kl_as_original
    assert forms["mse"] is mse_as_original and forms["pseudo"] is pseudo  # the pseudo CE was right
    assert float(kl_as_original(x)) == 0.0 and float(kl_distill(x.student[1], x.teacher[1])) > 0


def test_a_weight_of_zero_drops_its_term_and_a_source_only_run_draws_no_target_batch():
    objective = build_objective(ADAPTATION[0], Knobs(lambda_adv_aux=0.0))
    assert [t.name for t in objective.target] == ["adv_main"] and objective.adversarial_levels == (1,)
    source_only = build_objective(ADAPTATION[0], Knobs(lambda_adv_aux=0.0, lambda_adv_main=0.0))
    assert not source_only.uses_target and source_only.adversarial_levels == ()


def test_a_knob_has_one_name_in_constants_flags_and_config_and_old_names_still_work():
    defaults = {"TEACHER": "t.pth", "PARADIGM": "both"}
    for knob in declared(Knobs):
        cfg = parse_config({knob.name.upper(): knob.default, **defaults}, [], prog="p", description="", distill=True)
        assert getattr(cfg, knob.name) == knob.default and knob.name in cfg.to_dict()
    new = parse_config(defaults, ["--lambda-pseudo", "0.25", "--lambda-adv-aux", "0", "--form", "original"],
                       prog="p", description="", distill=True)
    old = parse_config(defaults, ["--lambda-targetce", "0.25", "--lambda-adv-target1", "0", "--objective",
                                  "original"], prog="p", description="", distill=True)
    assert (new.lambda_pseudo, new.lambda_adv_aux, new.form) == (old.lambda_pseudo, old.lambda_adv_aux, old.form)
    assert (new.lambda_pseudo, new.lambda_adv_aux, new.form) == (0.25, 0.0, "original")
    constants = {"LAMBDA_TARGETCE": 0.3, "TARGET_DISTILL": 0.2, "OBJECTIVE": "corrected", **defaults}
    cfg = parse_config(constants, [], prog="p", description="", distill=True)
    assert (cfg.lambda_pseudo, cfg.lambda_target, cfg.form) == (0.3, 0.2, "paper")
    # a config.json written before the knobs had their names
    saved = TrainConfig.from_dict({"lambda_targetce": 0.3, "lambda_adv_target2": 0.5, "objective": "corrected"})
    assert (saved.lambda_pseudo, saved.lambda_adv_main, saved.form) == (0.3, 0.5, "paper")
    assert knobs_of(saved) == Knobs(lambda_pseudo=0.3, lambda_adv_main=0.5)


def test_a_negative_weight_is_a_flag_error(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_config({}, ["--lambda-seg", "-1"], prog="p", description="", distill=False)
    assert stop.value.code == 2
    assert "argument --lambda-seg: expected a weight >= 0, got '-1'" in capsys.readouterr().err
