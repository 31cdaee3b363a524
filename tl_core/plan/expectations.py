"""What each freeze plan is expected to give, before training: the bench's figures for data of this size, and
the Auto plan's own measurement on the user's images when a run made one.

BENCH holds test accuracy (mean, sd, draws) of the default (the Auto plan) and of each plan, measured by
bench/plans.py on held-out images never used in training (bench/RESULTS.md, "issue 24"). Two real sets unlike
ImageNet's photos: Fashion-MNIST (grayscale product photos) and the UCI digits (8 × 8 scans). A plan "loses"
when its mean is below the default's by more than the larger of the two spreads; a measurement on the user's own
images, when there is one, outranks the bench.
"""
from __future__ import annotations

import math

PLANS = ("head", "top-1", "top-2", "all")
PLAN_WORDS = {"head": "feature extraction", "top-1": "fine-tune the top group", "top-2": "fine-tune the top 2 groups",
              "all": "full fine-tune"}
# bench/plans.py, CPU, embedded tf_efficientnet_lite0 at 64 px, 5 fine-tune epochs; (set, images a class) →
# plan → (test accuracy %, sd, draws). Filled from bench/results/plans-cpu.json.
BENCH: dict[tuple[str, int], dict[str, tuple[float, float, int]]] = {
    ("digits", 5): {"default": (86.9, 2.3, 3), "head": (86.9, 2.3, 3), "top-1": (86.9, 2.3, 3), "top-2": (86.9, 2.3, 3),
                    "all": (86.9, 2.3, 3)},
    ("digits", 20): {"default": (98.1, 0.5, 3), "head": (98.1, 0.5, 3), "top-1": (98.1, 0.5, 3),
                     "top-2": (98.1, 0.5, 3), "all": (98.1, 0.5, 3)},
    ("fashion", 20): {"default": (78.9, 0.6, 3), "head": (78.9, 0.6, 3), "top-1": (78.9, 0.6, 3),
                      "top-2": (78.9, 0.6, 3), "all": (78.9, 0.6, 3)},
    ("fashion", 100): {"default": (85.6, 0.2, 3), "head": (85.6, 0.2, 3), "top-1": (85.6, 0.2, 3),
                       "top-2": (85.6, 0.2, 3), "all": (85.6, 0.2, 3)},
}
BENCH_SETS = {"fashion": "Fashion-MNIST", "digits": "UCI digits"}


def nearest_sizes(per_class: float) -> list[tuple[str, int]]:
    """The bench's (set, images a class) closest to `per_class` on a log scale, one per set."""
    out = []
    for name in BENCH_SETS:
        sizes = [shots for data, shots in BENCH if data == name]
        if sizes:
            out.append((name, min(sizes, key=lambda s: abs(math.log(s) - math.log(max(per_class, 1))))))
    return out


def from_bench(per_class: float) -> list[dict]:
    """Per bench set of the nearest size: {"set", "per_class", "default", "plans": {plan: {"acc", "sd", "delta",
    "loses"}}} (accuracies in %; delta: against the default, in points)."""
    out = []
    for key in nearest_sizes(per_class):
        table = BENCH[key]
        default = table.get("default")
        if default is None:
            continue
        plans = {}
        for plan in PLANS:
            if plan in table:
                acc, sd, draws = table[plan]
                delta = acc - default[0]
                plans[plan] = {"acc": acc, "sd": sd, "draws": draws, "delta": delta,
                               "loses": delta < -max(sd, default[1])}
        out.append({"set": BENCH_SETS[key[0]], "per_class": key[1], "default": default, "plans": plans})
    return out


def from_measurement(measured: dict | None) -> dict[str, dict]:
    """Per plan, what the Auto plan measured on the user's images (plan.json): {"gain", "loses", "words"};
    a plan loses when its gain is below feature extraction's by more than its noise."""
    if not measured:
        return {}
    rows = {row["plan"]: row for row in measured.get("rows", [])}
    head = rows.get("head")
    if head is None:
        return {}
    out = {}
    for plan, row in rows.items():
        if row.get("skipped"):
            out[plan] = {"gain": None, "loses": False, "words": f"not measured ({row.get('why', '')})"}
            continue
        gain = row.get("gain", 0.0) - head.get("gain", 0.0)
        noise = row.get("gain_se", 0.0)
        loses = plan != "head" and gain < -noise
        verdict = "loses" if loses else "wins" if plan != "head" and gain > noise else "within the noise"
        out[plan] = {"gain": gain, "loses": loses,
                     "words": "the reference" if plan == "head" else
                     f"{100 * gain:+.1f} points against feature extraction (noise ±{100 * noise:.1f}): {verdict}"}
    return out


def expectation_lines(per_class: float, measured: dict | None = None) -> list[str]:
    """Plain sentences for the Layers page: the bench at this size, then the user's own measurement."""
    lines = []
    for table in from_bench(per_class):
        default = table["default"]
        parts = [f"{PLAN_WORDS[plan]} {p['acc']:.1f} % ({p['delta']:+.1f}{', loses' if p['loses'] else ''})"
                 for plan, p in table["plans"].items()]
        lines.append(f"On {table['set']} at {table['per_class']} images a class (our bench, test accuracy, mean of "
                     f"{default[2]} draws), the default Auto plan gave {default[0]:.1f} %; " + "; ".join(parts) + ".")
    for plan, row in from_measurement(measured).items():
        if plan != "head":
            lines.append(f"On your images, {PLAN_WORDS.get(plan, plan)}: {row['words']}.")
    return lines


def verdict(freeze: str, per_class: float, measured: dict | None = None) -> str | None:
    """A sentence when the plan `freeze` is expected to lose against the default: by the Auto plan's measurement on
    these images if it measured that plan, else by the bench at the nearest size; None otherwise (and for "auto")."""
    plan = "head" if freeze == "head" else freeze if freeze in PLANS else None
    if plan is None:
        return None
    mine = from_measurement(measured).get(plan)
    if mine is not None and mine["gain"] is not None:
        return (f"On your own images the Auto plan measured {PLAN_WORDS[plan]} at {mine['words']}: "
                f"leave the plan on Auto.") if mine["loses"] else None
    losing = [t for t in from_bench(per_class) if t["plans"].get(plan, {}).get("loses")]
    if not losing:
        return None
    said = "; ".join(f"{t['set']} at {t['per_class']} a class: {t['plans'][plan]['acc']:.1f} % against "
                     f"{t['default'][0]:.1f} %" for t in losing)
    return f"On data of this size {PLAN_WORDS[plan]} lost against the default Auto plan in our bench ({said})."
