"""Learning from the ledger: what each call's comparison says about teaching, per task family.

* ``outcomes.py``: the outcome of one call (improved, degraded, unchanged) from its report,
  and what evidence it rests on;
* ``posterior.py``: Beta posteriors and their intervals, in pure Python;
* ``gate.py``: the learned teaching gate (``gate: learned``) and family guidance reuse
  (``reuse: family``), decided per family from the evidence the state backend keeps;
* ``rebuild.py``: that evidence replayed from the ledger when a process starts;
* ``reward.py`` and ``export.py``: teacher-training data from a ledger that stored texts.
"""
