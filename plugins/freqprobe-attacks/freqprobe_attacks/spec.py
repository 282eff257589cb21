"""``--attack NAME[:K=V,...]`` and ``--eps LIST``: what the attacks plugin reads from a run's options.

Both are the plugin's own options (:func:`freqprobe_attacks.hooks.add_options`); the robustness
probe and the ``table2`` command parse them here, with the public option parsers. Imports
neither torch nor numpy.
"""

from __future__ import annotations

from typing import Any, Sequence

from freqprobe import UserFacingError, get_class
from freqprobe.plugin import guarded, parse_component, parse_numbers

#: Table 2's budgets and attacks (the probe's defaults)
DEFAULT_EPS = (0.03, 0.06, 0.09)
DEFAULT_ATTACKS = ("fgsm", "pgd")


def parse_attacks(specs: Sequence[str] | None, pm: Any = None) -> list[tuple[type, dict[str, Any]]]:
    """``["fgsm", "pgd:steps=10,random_start=false"]`` -> ``[(FGSM, {...}), (PGD, {...})]``, options checked.

    An attack given twice (the same label) is refused; ``pm``: the plugin manager (None: the process-wide one).
    """
    out: list[tuple[type, dict[str, Any]]] = []
    seen: set[str] = set()
    for spec in specs or ():
        name, given = parse_component(spec, "attack")
        cls = get_class("attacks", name, pm)
        with guarded(cls, "check_options()"):  # a third-party attack's exception: one line naming its plugin
            opts = cls.check_options(given)
        label = cls.label(opts)
        if label in seen:
            raise UserFacingError(f"--attack {spec} is given twice; pass each attack once")
        seen.add(label)
        out.append((cls, opts))
    return out


def parse_eps(text: str | Sequence[float] | None) -> list[float]:
    """``"0.03,0.06"`` -> ``[0.03, 0.06]``: positive, finite, no duplicates (``8/255`` is accepted); None -> ``[]``."""
    return parse_numbers(text, "--eps", unit="budget")


def run_attacks(config: Any, pm: Any = None) -> list[tuple[type, dict[str, Any]]]:
    """The attacks of a run's configuration (``attacks``); Table 2's (fgsm, pgd, default options) when none is given."""
    given = config.get("attacks")
    if given:
        return parse_attacks([given] if isinstance(given, str) else list(given), pm)
    return [(get_class("attacks", n, pm), {}) for n in DEFAULT_ATTACKS]


def run_eps(config: Any) -> list[float]:
    """The budgets of a run's configuration (``eps``); Table 2's 0.03, 0.06, 0.09 when none is given."""
    return parse_eps(config.get("eps")) or list(DEFAULT_EPS)


__all__ = ["DEFAULT_ATTACKS", "DEFAULT_EPS", "parse_attacks", "parse_eps", "run_attacks", "run_eps"]
