"""freqprobe's first-party attacks plugin: FGSM and PGD (L∞, L2) in [0,1] pixel space, the
``robustness`` probe (the paper's Eq. 1–2, Table 2, the frequency view of an attack and
Corollary 1 witnesses) and the ``table2`` command."""
