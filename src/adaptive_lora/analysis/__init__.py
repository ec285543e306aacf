"""Statistics of a study: paired comparisons of strategies with a baseline, and their text.

Modules, each owning one topic (import from the defining module):

- ``paired``: ``compare_paired`` and ``compare_family``, the comparisons a report shows
  (two-sided or one-sided, with the Wilcoxon floor after Holm)
- ``pairing``: pairing two ``{seed: value}`` maps by seed, and what was dropped
- ``descriptive``: ``describe``, ``iqm`` and ``mean_ci_t`` of one sample
- ``signed_rank``: the Wilcoxon signed-rank test and its p-value floor
- ``bootstrap``: paired percentile and BCa bootstrap intervals
- ``power``: the minimum detectable effect at 80 % power
- ``corrections``: Holm's step-down adjusted p-values
- ``verdict``: a comparison said in plain words
- ``formatting``: numbers and p-values as text (``fmt_num``, ``fmt_sig``, ``fmt_p``)
- ``jsonable``: strict-JSON copies of results (``to_jsonable``)
- ``equivalence``: TOST equivalence of paired differences against a margin
- ``margin_tests``: with fixed seeds, the declared smallest effect (a shifted one-sided
  paired t, Holm over the cell) and margin (TOST) tested
- ``values``: NaN-aware float helpers shared by the above
- ``planning``: seeds planned by power at the first Holm step (t-test, exact TOST power),
  the Wilcoxon floor and whether it can reach alpha after Holm (``wilcoxon_reach``)
- ``sequential``: group-sequential seeds (Lan–DeMets spending, alpha / m per comparison):
  ``SequentialDesign`` and ``sequential_decisions``
- ``hierarchical``: the two-level seeds × test items bootstrap (``hierarchical_bootstrap``)
"""
