"""Verifiable instructions: prompts whose constraints code can check, and the checks.

* ``constraints``: the constraint catalogue, the prompt generator (train and held-out sets over disjoint
  tasks) and the reader of a prompt file's constraints;
* ``checks``: the ``if-verifiable`` checks run offline (also used by the IFEval / IFBench suites);
* ``verify``: one response against its constraints, and the ``verifier`` judge's score.
"""
