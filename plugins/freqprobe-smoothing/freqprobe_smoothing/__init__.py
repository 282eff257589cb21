"""freqprobe's first-party smoothing plugin: first-layer kernel smoothing (the paper's Eq. 3) as the
model transform ``smooth``, and the ``kernels`` command (Figure 7)."""
