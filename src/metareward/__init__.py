"""metareward: the Meta-Rewarding loop (Wu et al. 2024, arXiv 2407.19594).

One model plays actor, judge and meta-judge; its own judgments and meta-judgments become DPO pairs
that improve both its answers and its judging, with no human labels.
"""

__version__ = "0.1.0"
