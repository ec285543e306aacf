"""The verdict: one comparison of a family, said in plain words.

``verdict`` reads a ``FamilyComparison`` of ``paired.compare_family`` (with its
Holm-adjusted p-values) and writes what the data support: the effect with its t interval, the primary test's
decision after Holm correction, the other test, the minimum detectable effect when
nothing is found, and the Wilcoxon floor when n is too small to reach alpha after Holm.
A comparison whose alternative was declared one-sided says so beside its p-values ("one-sided
p"), and a non-significant one-sided test says which direction it looked for.
"""

from __future__ import annotations

from adaptive_lora.analysis.comparison import FamilyComparison
from adaptive_lora.analysis.formatting import fmt_g, fmt_num, fmt_p, fmt_sig, metric_decimals
from adaptive_lora.analysis.values import is_nan

__all__ = ["verdict"]

_TEST_NAME = {"p_t": "paired t-test", "p_wilcoxon": "Wilcoxon signed-rank test"}


def verdict(name: str, base: str, r: FamilyComparison, *, metric: str, primary: str) -> str:
    """The sentence(s) for strategy ``name`` against ``base`` from the comparison ``r``.

    ``primary`` is ``"t"`` or ``"wilcoxon"``: the test whose Holm p decides; the other
    test is quoted after it.
    """
    n = r.n
    if n == 0:
        return f"{name} vs {base}: no seeds in common, nothing to compare."
    if n < 2:
        return _too_few_seeds(name, base, r.mean_diff, metric)
    if all(v == 0 for v in r.diffs):
        return f"{name} and {base} give identical {metric} on all {_seeds(n)}; no test possible."
    if r.sd_diff == 0:
        return _constant_difference(name, base, r, metric)
    p_key = "p_t" if primary == "t" else "p_wilcoxon"
    other_key = "p_wilcoxon" if primary == "t" else "p_t"
    return _headline(name, base, r, metric, p_key) + _other_test(r, p_key, other_key) + _floor(r)


def _p_label(r: FamilyComparison) -> str:
    """The p-value's label: "one-sided p" for a comparison declared one-sided, else "p"."""
    return "p" if r.alternative == "two-sided" else "one-sided p"


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def _direction(r: FamilyComparison) -> tuple[str, str]:
    """("lowers" / "raises", "an improvement" / "a deterioration") for the mean difference."""
    mean = r.mean_diff
    verb = "lowers" if mean < 0 else "raises"
    good = (mean < 0) == r.lower_is_better
    return verb, "an improvement" if good else "a deterioration"


def _too_few_seeds(name: str, base: str, mean: float, metric: str) -> str:
    dec = metric_decimals(mean)
    return (
        f"{name} vs {base}: too few seeds for a test (1 paired seed; difference "
        f"{fmt_num(mean, dec, plus=True)} in {metric})."
    )


def _constant_difference(name: str, base: str, r: FamilyComparison, metric: str) -> str:
    """Every difference is the same nonzero number: no t-test, only Wilcoxon."""
    mean, alpha, seeds = r.mean_diff, r.alpha, _seeds(r.n)
    verb, judgement = _direction(r)
    dec = metric_decimals(mean)
    head = (
        f"{name} {verb} {metric} by {fmt_num(abs(mean), dec)} on every one of the "
        f"{seeds} vs {base} ({judgement}); with zero spread the t-test and d_z "
        "are undefined"
    )
    pw = r.p_wilcoxon_holm
    if is_nan(pw):
        return head + "."
    sig = pw < alpha
    tail = (
        f"; Wilcoxon signed-rank {'significant' if sig else 'not significant'} "
        f"after Holm correction ({fmt_p(pw, alpha=alpha, label=_p_label(r))}"
    )
    if not r.can_reach_significance:
        tail += f"; it cannot reach p < {fmt_g(alpha)} with {seeds}{_floor_numbers(r)}"
    return head + tail + ")."


def _headline(name: str, base: str, r: FamilyComparison, metric: str, p_key: str) -> str:
    """The effect, its t interval and the primary test's decision after Holm correction."""
    alpha, mean, ci, seeds = r.alpha, r.mean_diff, r.ci_t, _seeds(r.n)
    p_raw, p_adj = getattr(r, p_key), getattr(r, p_key + "_holm")
    dec = metric_decimals(mean, *ci)
    level = f"{fmt_g(round(100 * r.confidence, 6))}%"
    ci_txt = f"{level} CI {fmt_num(ci[0], dec)} to {fmt_num(ci[1], dec)}"
    dz_txt = f"d_z = {fmt_sig(r.d_z)}"
    verb, judgement = _direction(r)
    effect = f"{name} {verb} {metric} by {fmt_num(abs(mean), dec)} ({ci_txt}) vs {base}, "
    label = _p_label(r)
    if not is_nan(p_adj) and p_adj < alpha:
        return (
            f"{effect}{judgement}; significant after Holm correction "
            f"({fmt_p(p_adj, alpha=alpha, label=label)}, {dz_txt}, {seeds})."
        )
    if not is_nan(p_raw) and p_raw < alpha:
        return (
            f"{effect}{judgement}, but not significant after Holm correction "
            f"({fmt_p(p_adj, alpha=alpha, label=label)}; uncorrected "
            f"{fmt_p(p_raw, alpha=alpha)}; {dz_txt}, {seeds})."
        )
    return (
        f"{_nothing_found(name, base, r, metric)}: mean "
        f"difference {fmt_num(mean, dec, plus=True)} ({ci_txt}; Holm-adjusted "
        f"{fmt_p(p_adj, alpha=alpha, label=label)}, {dz_txt}){_detectable(r, dec, metric)}."
    )


def _nothing_found(name: str, base: str, r: FamilyComparison, metric: str) -> str:
    """The opening of a verdict without a finding: what the (possibly one-sided) test sought."""
    alternative = r.alternative
    if alternative == "two-sided":
        return f"No detectable difference between {name} and {base} in {metric}"
    verb = "lowers" if alternative == "less" else "raises"
    return f"No evidence that {name} {verb} {metric} vs {base} (one-sided test)"


def _detectable(r: FamilyComparison, dec: int, metric: str) -> str:
    """The smallest effect detectable at 80% power, in d_z and in the metric ("" if NaN)."""
    mde = r.mde_d_z
    if is_nan(mde):
        return ""
    text = (
        f"; with {_seeds(r.n)} the smallest effect detectable at 80% power is d_z = {fmt_sig(mde)}"
    )
    if not is_nan(r.mde_metric):
        text += f" (about {fmt_num(r.mde_metric, dec)} in {metric})"
    return text


def _other_test(r: FamilyComparison, p_key: str, other_key: str) -> str:
    """The secondary test's Holm p, and whether it disagrees with the primary ("" if NaN)."""
    alpha = r.alpha
    p_adj, p_other = getattr(r, p_key + "_holm"), getattr(r, other_key + "_holm")
    if is_nan(p_other):
        return ""
    text = (
        f" The {_TEST_NAME[other_key]} gives Holm-adjusted "
        f"{fmt_p(p_other, alpha=alpha, label=_p_label(r))}"
    )
    if not is_nan(p_adj) and (p_other < alpha) != (p_adj < alpha):
        text += " and disagrees"
    return text + "."


def _floor_numbers(r: FamilyComparison) -> str:
    """The floor as text: ", floor 0.25"; in a family of 8, ", floor 0.0078 × 8 comparisons
    (Holm) = 0.0625"."""
    m = r.family_size
    text = f", floor {fmt_g(r.wilcoxon_floor_p)}"
    if m > 1:
        text += f" × {m} comparisons (Holm) = {fmt_g(r.wilcoxon_holm_floor_p)}"
    return text


def _floor(r: FamilyComparison) -> str:
    """The Wilcoxon floor, when n pairs cannot reach alpha after Holm ("" otherwise)."""
    if r.can_reach_significance:
        return ""
    sided = "two-sided" if r.alternative == "two-sided" else "one-sided"
    m = r.family_size
    if m > 1:
        return (
            f" With {_seeds(r.n)} and Holm over {m} comparisons the {sided} Wilcoxon test "
            f"cannot reach p < {fmt_g(r.alpha)} (its smallest possible Holm p is "
            f"{fmt_g(r.wilcoxon_holm_floor_p)})."
        )
    return (
        f" With {_seeds(r.n)} a {sided} Wilcoxon test cannot reach p < "
        f"{fmt_g(r.alpha)} (floor {fmt_g(r.wilcoxon_floor_p)})."
    )
