"""freqprobe first-party plugin: training with per-epoch low/high-frequency tracking (paper §4–5, Table 1, Figures 3–6)."""
