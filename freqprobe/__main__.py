"""``python -m freqprobe``: the same as the ``freqprobe`` console script (and what ``torchrun -m freqprobe`` runs)."""

from freqprobe.cli import entry

if __name__ == "__main__":
    entry()
