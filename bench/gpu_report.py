"""The GPU check's figures derived from its raw rows, and its Markdown report.

`summarize` adds to a result (in place, idempotent): per step row its FLOPs, achieved TFLOP/s and fraction of
the roof of the number type it runs on; `memory_fit` (the batch each script reaches within 24, 40 and 80 GB,
from a linear fit of its peaks at two batches) and `speedups` (ours over the original code's way).
"""
from __future__ import annotations

import math

CARDS_GIB = (24, 40, 80)
PRECISIONS = ("fp32", "bf16", "fp16")


def roof(result: dict) -> dict[str, float]:
    """The best of the roofs measured at the start and the end of the run, per number type."""
    start, end = result.get("roof_start") or {}, result.get("roof_end") or {}
    return {k: max(start.get(k, 0.0), end.get(k, 0.0)) for k in {**start, **end}}


def roof_kind(result: dict, precision: str) -> str:
    """The number type whose roof a step of `precision` is compared with."""
    if precision != "fp32":
        return precision
    return result["config"].get("fp32_steps_run_on", "fp32")


def batch_fit(points: list[tuple[int, float]], context_gib: float = 0.0, cards=CARDS_GIB) -> dict | None:
    """Linear fit `peak = fixed + per_image x batch` through two (batch, GiB) points, and the largest batch
    whose peak plus `context_gib` stays within each card's GiB (None for a card when the fit cannot say)."""
    if len(points) < 2 or points[0][0] == points[1][0]:
        return None
    (b1, m1), (b2, m2) = sorted(points)[:2]
    per_image = (m2 - m1) / (b2 - b1)
    fixed = m1 - per_image * b1
    if per_image <= 0:
        return {"per_image_gib": per_image, "fixed_gib": fixed, "max_batch": {str(c): None for c in cards},
                "note": "the peak did not grow with the batch"}
    reach = {str(c): max(0, math.floor((c - context_gib - fixed) / per_image)) for c in cards}
    return {"per_image_gib": per_image, "fixed_gib": fixed, "max_batch": reach}


def _measured(rows: list[dict], **match) -> dict | None:
    for r in rows:
        if r.get("status") == "measured" and all(r.get(k) == v for k, v in match.items()):
            return r
    return None


def summarize(result: dict) -> dict:
    """Add the derived figures to `result` (see the module's docstring); return it."""
    best = roof(result)
    flops = result.get("flops_per_step", {})
    scripts = list(dict.fromkeys(r["script"] for r in result["steps"]))
    for r in result["steps"]:
        if r.get("status") != "measured" or r["script"] not in flops:
            continue
        base = next((x["batch"] for x in result["steps"] if x["script"] == r["script"] and x["purpose"] == "steps"),
                    r["batch"])
        kind = roof_kind(result, r["precision"])
        r["gflop_per_step"] = flops[r["script"]] * r["batch"] / base / 1e9
        r["tflop_s"] = r["gflop_per_step"] / r["step_s"] / 1e3
        r["roof_kind"] = kind
        r["pct_of_roof"] = 100 * r["tflop_s"] / best[kind] if best.get(kind) else None
    steps = [r for r in result["steps"] if r["purpose"] == "steps"]
    result["speedups"] = []
    for key in scripts:
        old = _measured(steps, script=key, way="old way")
        ours = _measured(steps, script=key, way="ours", precision="fp32", channels_last=False)
        fastest = min((r for r in steps if r["script"] == key and r["way"] == "ours" and r.get("status") == "measured"),
                      key=lambda r: r["step_s"], default=None)
        if old and ours:
            result["speedups"].append({
                "script": key, "fp32_over_old_way": old["step_s"] / ours["step_s"],
                "fastest": fastest["case"], "fastest_over_old_way": old["step_s"] / fastest["step_s"]})
    context = result["config"].get("cuda_context_gib", 0.0) or 0.0
    result["memory_fit"] = []
    for key in scripts:
        for precision in ("fp32", "bf16"):
            rows = [r for r in result["steps"] if r["script"] == key and r["precision"] == precision
                    and r["way"] == "ours" and not r["channels_last"] and r.get("status") == "measured"]
            points = {r["batch"]: r["peak_reserved_gib"] for r in rows}
            fit = batch_fit(sorted(points.items()), context)
            if fit:
                result["memory_fit"].append({"script": key, "precision": precision,
                                             "peaks_gib": {str(b): g for b, g in sorted(points.items())},
                                             "context_gib": context, **fit})
    return result


# --- Markdown ------------------------------------------------------------------------------------
def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _size(size) -> str:
    return f"{size[0]}x{size[1]}"


def _header(result: dict) -> list[str]:
    c = result["config"]
    where = (f"{c['gpu']} (compute capability {'.'.join(map(str, c['capability']))}, {c['gpu_memory_gib']:.0f} GiB), "
             f"CUDA {c['cuda']}, cuDNN {c['cudnn']}" if c.get("gpu") else "CPU, no GPU (a stand-in run)")
    cut, failed = len(result.get("cut", [])), len(result.get("failed", []))
    lines = [f"### GPU check: {where}, torch {c['torch']}, {c['date']}", "",
             f"`{c['command']}`: {result.get('elapsed_s', 0):.0f} s of a {c['budget_s']:.0f} s budget; "
             f"{c['warmup']} warm-up and up to {c['repeats']} timed steps per case; {cut} cut, {failed} failed."]
    best = roof(result)
    if best:
        lines += ["", f"Roof ({c['roof_n']}x{c['roof_n']} matrix products, TFLOP/s, the better of the run's start "
                      "and end): " + ", ".join(f"{k} {v:.3g}" for k, v in best.items())
                  + (f"; fp32 steps are compared with the {c['fp32_steps_run_on']} roof (cuDNN runs float32 "
                     "convolutions on TF32 units: `torch.backends.cudnn.allow_tf32`)"
                     if c.get("fp32_steps_run_on") == "tf32" else "") + "."]
    return lines


STEP_HEAD = ("| script (net) | batch | source / target | way | precision | layout | ms/step median (min) | images/s "
             "| peak GiB alloc / reserved | TFLOP/step | TFLOP/s | of roof | losses finite |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def _step_row(r: dict) -> str:
    head = (f"| {r['script']} ({r['arch']}) | {r['batch']} | {_size(r['source_size'])} / {_size(r['target_size'])} "
            f"| {r['way']} | {r['precision']} | {'channels_last' if r['channels_last'] else 'NCHW'} |")
    if r.get("status") != "measured":
        return head + f" {r.get('status')}: {r.get('note', '')} | | | | | | |"
    pct = "-" if r.get("pct_of_roof") is None else f"{r['pct_of_roof']:.0f} % {r['roof_kind']}"
    tflop = None if r.get("gflop_per_step") is None else r["gflop_per_step"] / 1e3
    return head + (f" {1e3 * r['step_s']:.1f} ({1e3 * r['step_s_min']:.1f}) | {r['images_per_s']:.3g} "
                   f"| {r['peak_alloc_gib']:.3g} / {r['peak_reserved_gib']:.3g} | {_num(tflop)} "
                   f"| {_num(r.get('tflop_s'))} | {pct} | {'yes' if r['finite'] else 'NO'} |")


def _steps(result: dict) -> list[str]:
    order = list(dict.fromkeys(r["script"] for r in result["steps"]))
    rows = sorted((r for r in result["steps"] if r["purpose"] == "steps"),
                  key=lambda r: (order.index(r["script"]), r["way"] != "ours", PRECISIONS.index(r["precision"]),
                                 r["channels_last"]))
    if not rows:
        return []
    lines = ["", "#### Training steps (synthetic frames at the paper's sizes; images/s counts source images, each "
                 "step also runs as many target images)", "", STEP_HEAD, *(_step_row(r) for r in rows)]
    notes = {r["script"]: r["note"] for r in rows if r.get("status") == "measured" and r.get("note")}
    lines += [f"- {key}: {note}" for key, note in notes.items()]
    for s in result.get("speedups", []):
        lines.append(f"- {s['script']}: ours over the original code's way (both fp32) {s['fp32_over_old_way']:.2f}x; "
                     f"the fastest, {s['fastest']}, {s['fastest_over_old_way']:.2f}x")
    return lines


def _memory(result: dict) -> list[str]:
    fits = result.get("memory_fit", [])
    if not fits:
        return []
    context = fits[0]["context_gib"]
    lines = ["", "#### Memory: the largest batch per card (a linear fit of the peaks at two batches)", "",
             "| script | precision | peak GiB reserved, by batch | GiB per image | fixed GiB | batch within "
             + " / ".join(f"{c} GB" for c in CARDS_GIB) + " |", "|---|---|---|---|---|---|"]
    for f in fits:
        peaks = ", ".join(f"{g:.3g} at {b}" for b, g in f["peaks_gib"].items())
        reach = " / ".join("-" if v is None else str(v) for v in f["max_batch"].values())
        lines.append(f"| {f['script']} | {f['precision']} | {peaks} | {f['per_image_gib']:.3g} | {f['fixed_gib']:.3g} "
                     f"| {reach} |")
    lines.append(f"\nPeaks: PyTorch's caching allocator (`max_memory_reserved`) over the timed steps, after warm-up; "
                 f"a card must also hold the CUDA context ({context:.2f} GiB measured here, added to the fit). The "
                 "fit is a straight line through two points: cuDNN may pick other algorithms at other batches, so "
                 "treat the reach as an estimate and keep a margin.")
    return lines


def _compile(result: dict) -> list[str]:
    rows = result.get("compile", [])
    if not rows:
        return []
    lines = ["", "#### `--compile` (torch.compile of the nets, in place)", "",
             "| script | precision | backend | compile s | first step s | ms/step compiled | ms/step eager "
             "| speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") != "measured":
            lines.append(f"| {r['script']} | | | {r.get('status')}: {r.get('note', '')[:120]} | | | | |")
            continue
        lines.append(f"| {r['script']} | {r['precision']} | {r['backend']} | {r['compile_s']:.1f} | "
                     f"{r['first_step_s']:.1f} | {1e3 * r['step_s']:.1f} | {1e3 * r['eager_step_s']:.1f} | "
                     f"{r['speedup']:.2f}x |")
    return lines


def _eval(result: dict) -> list[str]:
    rows = result.get("eval", [])
    if not rows:
        return []
    lines = ["", "#### eval_cs.py's pipeline (DRN-D-22, batch 1)", "",
             "| flags | input / labels | images | images/s end to end | images/s model only |", "|---|---|---|---|---|"]
    lines += [f"| `{r['flags']}` | {_size(r['input_size'])} / {_size(r['label_size'])} | {r['images']} | "
              f"{r['images_per_s']:.3g} | {r['model_images_per_s']:.3g} |" for r in rows]
    return lines


def _numerics(result: dict) -> list[str]:
    lines = []
    d = result.get("deterministic")
    if d:
        verdict = "yes" if d["bitwise_equal"] else (f"no: {d['tensors_differing']} of {d['tensors']} tensors differ, "
                                                    f"max |diff| {d['max_abs_diff']:.3g}")
        ops = ", ".join(d["nondeterministic_ops"]) or "none reported"
        lines += ["", f"`--deterministic`, {d['script']} step, {d['steps']} fp32 steps, two runs in one process: "
                      f"bit for bit equal: {verdict}. Ops torch reports without a deterministic kernel: {ops}."]
    t = result.get("tests")
    if t:
        if "tests" in t:
            failing = f" (failing: {', '.join(t['failing'])})" if t.get("failing") else ""
            lines += ["", f"`{t['command']}`: {t['passed']} passed, {t['failed'] + t['errors']} failed, "
                          f"{t['skipped']} skipped{failing}."]
        else:
            lines += ["", f"`{t['command']}`: {t['status']}."]
    return lines


def _problems(result: dict) -> list[str]:
    lines = []
    for key, title in (("cut", "Cut by the budget"), ("failed", "Failed")):
        if result.get(key):
            lines += ["", f"{title}:"] + [f"- {e['section']}: {e['item']}: {e['reason']}" for e in result[key]]
    return lines


def format_markdown(result: dict) -> str:
    """The whole report: header and roof, steps, memory, compile, evaluation, numerics, what was cut."""
    lines = _header(result) + _steps(result) + _memory(result) + _compile(result) + _eval(result) \
        + _numerics(result) + _problems(result)
    return "\n".join(lines)

