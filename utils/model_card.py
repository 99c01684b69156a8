"""A net's model card: parameters, GFLOPs and CPU latency (PyTorch and its onnxruntime graphs), and the machine."""
from __future__ import annotations

import torch
from torch import nn

from model import count_parameters
from utils.flops import gflops
from utils.logger import describe_machine, environment
from utils.timing import median_ms


@torch.inference_mode()
def latency_ms(net: nn.Module, size: tuple[int, int], runs: int, session=None, int8_session=None) -> dict:
    """Median CPU latency (ms) of the main head on one (1, 3, H, W) image: PyTorch, and the onnxruntime
    sessions given (fp32, int8), each after one warm-up call."""
    w, h = size
    x = torch.randn(1, 3, h, w)
    net = net.eval()
    result = {"size": [w, h], "runs": runs, "threads": torch.get_num_threads(),
              "torch_ms": median_ms(lambda: net(x), runs)}
    feed = {"image": x.numpy()}
    for key, graph in (("onnxruntime_ms", session), ("onnxruntime_int8_ms", int8_session)):
        if graph is not None:
            result[key] = median_ms(lambda graph=graph: graph.run(None, feed), runs)
    return result


def model_card(name: str, net: nn.Module, card_size: tuple[int, int], latency_size: tuple[int, int] | None = None,
               runs: int = 3, session=None, int8_session=None) -> dict:
    """Parameters, GFLOPs at `card_size` and, unless `latency_size` is None, the latency there; and the
    machine (torch, CPU capability, GPU) that measured them."""
    aux_params = count_parameters(net.aux_head) if hasattr(net, "aux_head") else 0
    card = {"name": name, "arch": getattr(net, "arch", None), "aux_layer": getattr(net, "aux_layer", None),
            "params": count_parameters(net), "params_inference": count_parameters(net) - aux_params,
            "gflops": gflops(net, card_size), "card_size": list(card_size),
            "environment": environment()}
    if latency_size is not None:
        card["latency"] = latency_ms(net, latency_size, runs, session, int8_session)
    return card


def format_cards(cards: list[dict]) -> str:
    """The model card table as printed on stdout (with each card's mIoU line when it was scored)."""
    w, h = cards[0]["card_size"]
    head = (f"{'model':<24} {'params (M)':>10} {'main only':>10} {f'GFLOPs@{w}x{h}':>16} "
            f"{'torch ms':>9} {'onnxrt ms':>9} {'int8 ms':>9}")
    lines = [head, "-" * len(head)]
    for c in cards:
        lat = c.get("latency", {})
        times = (f"{lat[key]:9.0f}" if key in lat else f"{'-':>9}"
                 for key in ("torch_ms", "onnxruntime_ms", "onnxruntime_int8_ms"))
        lines.append(f"{c['name'][:24]:<24} {c['params'] / 1e6:10.2f} {c['params_inference'] / 1e6:10.2f} "
                     f"{c['gflops']:16.1f} {' '.join(times)}")
        if "eval" in c:
            lines.append("  " + format_scores(c["eval"]))
    if cards and "latency" in cards[0]:
        lat = cards[0]["latency"]
        lines.append(f"latency: median of {lat['runs']} runs, batch 1 at {lat['size'][0]}x{lat['size'][1]}, "
                     f"CPU, {lat['threads']} threads; GFLOPs = 2 x conv multiply-adds")
    if cards and "environment" in cards[0]:
        lines.append(f"machine: {describe_machine(cards[0]['environment'])}")
    return "\n".join(lines)


def format_scores(scores: dict) -> str:
    """One line: the mIoU of each scored graph (and the int8 graph's difference), from `score_graphs`."""
    forms = [f"{form} {scores[form]['mIoU']:.2f}" for form in ("fp32", "int8") if form in scores]
    diff = f" (int8 - fp32: {scores['int8_minus_fp32']:+.2f})" if "int8_minus_fp32" in scores else ""
    return (f"mIoU on {scores['dataset']} {scores['split']} ({scores['fp32']['num_images']} images at "
            f"{scores['input_size'][0]}x{scores['input_size'][1]}): {', '.join(forms)}{diff}")
