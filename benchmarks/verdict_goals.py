"""The verdict benchmark's goals, checked on its stored test runs (trains nothing).

Usage: python benchmarks/verdict_goals.py [OUTPUT]   (default benchmarks/results/verdict)

The goals were fixed in issue 19 before any test seed ran; they are written here once. Each is a
paired comparison of test NDCG@10 over the seeds both models finished (95% t interval over
seeds, recbole_fofa.benchmark.stats) with a bound the interval's lower end must clear and, for
some, a cost ceiling (the model's MACs over the reference's). Every ForwardOFA variant that has
runs (:data:`VARIANTS`) is checked; a model without runs yet is skipped. The
oracle row is not a goal: it states how much per-user routing could gain on this data; nor are
the sensitivity rows (:data:`SENSITIVITY`), which repeat a goal against another reference.

Test seeds are added one at a time toward a planned number (what the measured spread needs for
the target minimum detectable difference, at most :data:`LAST_LOOK`), so each goal's "result at
95%" is an interim look until its planned seeds are in, when it is decided once
(:func:`_decided_at` says at which look; the cell shows the result there). The last column
says whether a goal can be claimed before then: its bound checked on the interval at
:data:`CLAIM_CONFIDENCE`, Bonferroni over every look the plan can take (a claim at any look then
keeps the plan's error rate at 5%), at this look and, where an earlier look met it, at the first
that did (the claim was made there and stands).

A second table checks each claim two more ways (:func:`robustness_rows`): over the looks of
every variant that has runs, and with a sign test over seeds that assumes nothing of the
differences' shape. A third applies the switches' adoption rule (docs/design-notes.md, "The
switches' pilot and how one is adopted", fixed before any switch ran; :func:`switch_rows`):
decided on valid NDCG@10 over the pilot's seeds, with each switch's test difference from
ForwardOFA reported beside it whatever the decision.
"""

import math
import sys

import numpy as np

from recbole_fofa.benchmark import stats
from recbole_fofa.benchmark.report import (
    ORACLE,
    PRIMARY,
    SEARCHED,
    BenchmarkReport,
    comparison_text,
)
from recbole_fofa.benchmark.runner import SWITCHES
from recbole_fofa.benchmark.status import VERDICT_FOLDER, finished_runs, print_folder_table
from recbole_fofa.table import format_table

#: (goal, reference, lower bound of the CI, MACs ceiling); the model is each ForwardOFA variant
GOALS = [
    ("same quality at half the cost", "SASRec-6", -0.005, 0.5),
    ("better than a static model of equal cost", "SASRec-3", 0.0, math.inf),
    ("per-user structure pays", "{model} " + SEARCHED, 0.0, math.inf),
    ("beyond: better than SASRec-6 at half the cost", "SASRec-6", 0.0, 0.5),
]
#: stage 2 alone on SASRec-6 at lr 0.002 (added 2026-12-05 before any of its runs, with the
#: same adoption rule as fromSASRec): the issue's "train SASRec-6, then make it device-adaptive"
ADAPT = "ForwardOFA-adaptSASRec@learning_rate=0.002@backbone_init=@SASRec-6@learning_rate=0.002"
#: how the printed tables name the models whose labels are too long for a column
SHOWN = {ADAPT: "adaptSASRec"}
VARIANTS = ["ForwardOFA", "ForwardOFA-fromSASRec", ADAPT]
#: a sensitivity check, not a goal (decided 2026-12-05, after SASRec-6's tuned learning rate,
#: 0.004, stalled on two of its three test seeds): each goal against SASRec-6 is also checked
#: against SASRec-6 at the grid's runner-up on valid, which trained on both tuning seeds
SENSITIVITY = {"SASRec-6": "SASRec-6@learning_rate=0.002"}

#: the plan: a look at every test seed from FIRST_LOOK to at most LAST_LOOK (about what CPUs
#: allow), and the confidence that a claim before a goal's planned seeds are in needs
FIRST_LOOK, LAST_LOOK = 3, 20
LOOKS = LAST_LOOK - FIRST_LOOK + 1
CLAIM_CONFIDENCE = 1 - 0.05 / LOOKS
#: when a goal is decided at 95%: at the first look after RULE_FROM whose seeds reach the plan
#: made at the look before (the spread there, "seeds for MDE", capped at LAST_LOOK), at LAST_LOOK
#: at the latest. The rule was written down on 2026-12-06 at 10 paired seeds, before any later
#: seed was tabulated, so it only decides later looks; the looks before it decided as the docs
#: recorded them while they were made (RECORDED: the comparison and the look). Read back onto
#: those looks it would have decided adaptSASRec's goal 3 from its pilot's three close
#: differences, which the docs never did: a plan from 3 seeds' spread is not one to stop on.
RULE_FROM = 10
RECORDED = {("ForwardOFA", f"ForwardOFA {SEARCHED}"): 7, (ADAPT, "SASRec-3"): 7,
            (ADAPT, "SASRec-6@learning_rate=0.002"): 8}

#: the switches' pilot: the seeds the adoption rule reads, and the rule's parts. A switch is
#: adopted when its mean paired valid difference from ForwardOFA is above 0 and it is ahead on at
#: least MIN_AHEAD seeds; of BACKBONE_RATES only the one with the larger mean can be; each of
#: SAVES_STAGE1 is adopted unless it is behind by more than SAVES_STAGE1_MARGIN; DIAGNOSTICS are
#: never adopted
PILOT_SEEDS = (2020, 2021, 2022)
MIN_AHEAD = 2
BACKBONE_RATES = ("ForwardOFA-backbone1", "ForwardOFA-backbone0")
SAVES_STAGE1, SAVES_STAGE1_MARGIN = ("ForwardOFA-fromSASRec", ADAPT), 0.002
DIAGNOSTICS = ("ForwardOFA-nomapper",)
BASE = "ForwardOFA"


def _compare(records, model, reference, **options):
    pair = [r for r in records if r["label"] in (model, reference)]
    if {model, reference} - {r["label"] for r in pair}:
        return None
    rows = stats.compare(pair, reference, [PRIMARY], **options)
    return next((row for row in rows if row["model"] == model), None)


def _look(records, model, reference, confidence, seeds=None):
    """(the comparison row at ``confidence``, its paired seeds in ascending order) over
    ``seeds`` (default: every seed both models finished); no per-user tests. (None, []) when
    the two models share no seed."""
    if seeds is not None:
        records = [r for r in records if r["seed"] in seeds]
    row = _compare(records, model, reference, confidence=confidence, n_resamples=0)
    if row is None:
        return None, []
    return row, sorted(int(item.partition(":")[0]) for item in row["seed_diffs"].split(";") if item)


def _claim_look(records, model, reference, bound, ceiling, seeds=None):
    """(interval's low end at :data:`CLAIM_CONFIDENCE`, goal result, paired seeds) over
    ``seeds`` (default: every seed both models finished)."""
    row, paired = _look(records, model, reference, CLAIM_CONFIDENCE, seeds)
    return row["ci_low"], stats.goal_result(row, bound, ceiling), paired


def _claim(records, model, reference, bound, ceiling):
    """The claim check at this look, and the first look that met it: looks are the paired test
    seeds in the order the plan adds them (ascending), from :data:`FIRST_LOOK` on, and a claim
    made at a look stands whatever later looks say, so both are shown."""
    low, result, seeds = _claim_look(records, model, reference, bound, ceiling)
    if result == stats.TOO_FEW_SEEDS:
        return result
    if len(seeds) < FIRST_LOOK:
        return f"{low:+.4f}: {stats.TOO_FEW_SEEDS} (the first look is at {FIRST_LOOK})"
    now = f"{low:+.4f}: {result}"
    for n in range(FIRST_LOOK, len(seeds)):  # the earlier looks; this one is ``now``
        first_low, first, _ = _claim_look(records, model, reference, bound, ceiling, seeds[:n])
        if first == "met":
            return f"{now}; claimed at {n} seeds ({first_low:+.4f})"
    return f"{now} (first at {len(seeds)} seeds)" if result == "met" else now


def _decided_at(records, model, reference, seeds):
    """The look (number of paired seeds) at which the comparison's goals were decided at 95%,
    or None while they are interim: :data:`RECORDED`, else :data:`RULE_FROM`'s rule.
    ``seeds``: the two models' paired seeds in ascending order (:func:`_look`)."""
    recorded = RECORDED.get((model, reference))
    if recorded is not None and recorded <= len(seeds):
        return recorded
    for n in range(max(RULE_FROM, FIRST_LOOK) + 1, len(seeds) + 1):
        planned = _look(records, model, reference, 0.95, seeds[:n - 1])[0]["seeds_needed"]
        if n >= planned or n >= LAST_LOOK:  # planned is NaN beyond MAX_SEEDS
            return n
    return None


def _result(records, model, reference, bound, ceiling):
    """The "result at 95%" cell: the goal's result at the look that decided it, or at this
    look while it is interim."""
    row, seeds = _look(records, model, reference, 0.95)
    result = stats.goal_result(row, bound, ceiling)
    decided = (None if result == stats.TOO_FEW_SEEDS
               else _decided_at(records, model, reference, seeds))
    if decided is None:
        return result if result == stats.TOO_FEW_SEEDS else f"{result} (interim)"
    at = _look(records, model, reference, 0.95, seeds[:decided])[0]
    return (f"{stats.goal_result(at, bound, ceiling)} (decided at {decided} seeds: "
            f"{comparison_text(at)['difference']})")


def _cells(row):
    text = comparison_text(row)
    per_seed = " ".join(item.partition(":")[2] for item in row["seed_diffs"].split(";"))
    return [row["n_seeds"], text["difference"], row["verdict"], per_seed,
            row["users_significant"] or "-", text["macs_ratio"], text["seeds_needed"]]


def _goal_comparisons(records):
    """(goal, model, reference, bound, ceiling) of each goal and sensitivity row whose two
    models have runs, in the table's order; each variant's oracle row last, bound None."""
    labels = {r["label"] for r in records}
    for model in VARIANTS:
        for goal, reference, bound, ceiling in GOALS:
            reference = reference.format(model=model)
            for other in [reference, *([SENSITIVITY[reference]] if reference in SENSITIVITY
                                       else [])]:
                if {model, other} <= labels:
                    yield (goal if other == reference else f"(sensitivity) {goal}", model,
                           other, bound, ceiling)
        if {model, f"{model} {ORACLE}"} <= labels:
            yield "(headroom) oracle routing", f"{model} {ORACLE}", model, None, None


def goal_rows(records):
    """One row per (ForwardOFA variant, goal) whose runs exist, then the oracle's headroom."""
    records = records + BenchmarkReport(records, {}).routing_records()
    rows = []
    for goal, model, other, bound, ceiling in _goal_comparisons(records):
        row = _compare(records, model, other)
        if row is None:
            continue
        if bound is None:
            rows.append([goal, f"{model} - {other}", *_cells(row), "", "", ""])
            continue
        need = f"CI low > {bound:+.3f}" + (f", MACs <= {ceiling}x" if ceiling < math.inf else "")
        rows.append([goal, f"{model} - {other}", *_cells(row), need,
                     _result(records, model, other, bound, ceiling),
                     _claim(records, model, other, bound, ceiling)])
    return rows


def robustness_rows(records):
    """Two checks beside each goal's claim, for what its t interval over one variant's looks
    leaves out: the bound on the interval that pays for every look of every variant with runs
    (Bonferroni over :data:`LOOKS` times their number), and a sign test of the per-seed
    differences against the bound (:func:`~recbole_fofa.benchmark.stats.sign_test`), which
    assumes nothing of their shape, with whether its p is below the claim's 0.05 / LOOKS."""
    records = records + BenchmarkReport(records, {}).routing_records()
    variants = {r["label"] for r in records} & set(VARIANTS)
    if not variants:
        return [], 0, math.nan
    confidence = 1 - 0.05 / (LOOKS * len(variants))
    rows = []
    for goal, model, other, bound, ceiling in _goal_comparisons(records):
        if bound is None:
            continue
        row, seeds = _look(records, model, other, confidence)
        if row is None:
            continue
        above, apart, p = stats.sign_test(row["diffs"], bound)
        rows.append([goal, f"{model} - {other}", len(seeds),
                     f"{row['ci_low']:+.5f}: {stats.goal_result(row, bound, ceiling)}",
                     f"{above}/{apart}", f"{p:.4f}", "yes" if p < 1 - CLAIM_CONFIDENCE else "no"])
    return rows, LOOKS * len(variants), confidence


def _valid_diffs(records, switch):
    """{seed: switch's valid NDCG@10 - ForwardOFA's} over the pilot seeds both finished."""
    valid = {(r["label"], r["seed"]): (r.get("valid") or {}).get(PRIMARY) for r in records}
    return {seed: valid[switch, seed] - valid[BASE, seed] for seed in PILOT_SEEDS
            if valid.get((switch, seed)) is not None and valid.get((BASE, seed)) is not None}


def _decision(switch, diffs, backbone_best):
    if switch in DIAGNOSTICS:
        return "diagnostic (never adopted)"
    if len(diffs) < len(PILOT_SEEDS):
        return stats.TOO_FEW_SEEDS
    mean = float(np.mean(list(diffs.values())))
    if switch in SAVES_STAGE1:
        return "adopted" if mean >= -SAVES_STAGE1_MARGIN else "not adopted"
    ahead = sum(d > 0 for d in diffs.values())
    if mean <= 0 or ahead < MIN_AHEAD:
        return "not adopted"
    if switch in BACKBONE_RATES and backbone_best is None:
        return f"{stats.TOO_FEW_SEEDS} (of the other backbone rate)"
    if switch in BACKBONE_RATES and switch != backbone_best:
        return "not adopted (the other backbone rate has the larger mean)"
    return "adopted"


def switch_rows(records):
    """One row per switch with pilot runs: its paired valid NDCG@10 difference from ForwardOFA
    per pilot seed and their mean, seeds ahead, the rule's decision, and its paired test
    difference with the 95% interval over seeds and the verdict (reported, never deciding)."""
    switches = [*SAVES_STAGE1, *SWITCHES, *DIAGNOSTICS]
    diffs = {s: _valid_diffs(records, s) for s in switches}
    means = {s: float(np.mean(list(d.values()))) for s, d in diffs.items() if d}
    rates = [s for s in BACKBONE_RATES if len(diffs[s]) == len(PILOT_SEEDS)]
    backbone_best = max(rates, key=means.get) if len(rates) == len(BACKBONE_RATES) else None
    rows = []
    for switch in switches:
        if not diffs[switch]:
            continue
        test = _compare(records, switch, BASE)
        rows.append([switch, len(diffs[switch]),
                     " ".join(f"{d:+.4f}" for d in diffs[switch].values()),
                     f"{means[switch]:+.4f}", sum(d > 0 for d in diffs[switch].values()),
                     _decision(switch, diffs[switch], backbone_best),
                     comparison_text(test)["difference"] if test else "-",
                     test["verdict"] if test else "-"])
    return rows


GOAL_COLUMNS = ["goal", "comparison (test NDCG@10)", "seeds", "mean diff [95% CI]", "verdict",
                "per seed", "seeds with users p < 0.05", "MACs ratio",
                f"seeds for MDE {stats.TARGET_MDE}", "needs", "result at 95%",
                f"claim ({CLAIM_CONFIDENCE:.1%}: {LOOKS} looks)"]
ROBUSTNESS_COLUMNS = ["goal", "comparison (test NDCG@10)", "seeds", "low end: result",
                      "seeds above the bound", "sign test p", f"p < {1 - CLAIM_CONFIDENCE:.4f}"]
SWITCH_COLUMNS = ["switch", "pilot seeds", "valid diff per seed", "mean valid diff",
                  "seeds ahead", "decision", "test diff [95% CI] vs ForwardOFA", "test verdict"]


def _shown(rows):
    """``rows`` with every label of :data:`SHOWN` in its short name."""
    def short(cell):
        if isinstance(cell, str):
            for label, name in SHOWN.items():
                cell = cell.replace(label, name)
        return cell
    return [[short(cell) for cell in row] for row in rows]


def main(argv):
    folder = argv[0] if argv else VERDICT_FOLDER
    records = finished_runs(folder)
    print_folder_table([folder], lambda _: _shown(goal_rows(records)), "no pair of models has "
                       "finished test runs on common seeds yet", GOAL_COLUMNS)
    robust, looks, confidence = robustness_rows(records)
    if robust:
        print(f"\nThe claims' bounds over every variant's looks ({confidence:.2%}: {looks} "
              "looks), and a sign test of the per-seed differences against each bound:\n")
        print(format_table(_shown(robust), ROBUSTNESS_COLUMNS, style="markdown"))
    switches = switch_rows(records)
    if switches:
        print("\nThe switches' pilot (decided on valid NDCG@10; test reported beside it):\n")
        print(format_table(_shown(switches), SWITCH_COLUMNS, style="markdown"))
    named = [f"{name} = {label}" for label, name in SHOWN.items()
             if any(r["label"] == label for r in records)]
    if named:
        print("\n" + "; ".join(named))


if __name__ == "__main__":
    main(sys.argv[1:])
