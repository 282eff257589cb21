"""Calls into plugin code, guarded: a third-party plugin's exception becomes a one-line PluginError.

``plugin 'boxplug' (boxplug 1.0) failed in decompose() of decomposer 'box': ValueError: ...``

Only classes a third-party plugin registered (see :func:`freqprobe.registry.provider_of`) are
wrapped: a built-in's bug and a Python user's own object keep their traceback. FreqprobeErrors
(a plugin's :class:`~freqprobe.errors.UserFacingError`) pass through unchanged, and so do
``KeyboardInterrupt`` and ``SystemExit``. The original exception stays chained (``__cause__``);
``freqprobe -vv`` prints its traceback.

The decomposer helpers also check what a decomposer returns (its declared components, tensors
of the input's shape, device and a floating dtype), once per call, without a pass over the data.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from .errors import FreqprobeError, PluginError
from .interfaces import Decomposer
from .manager import Provider, is_builtin, provider_of

if TYPE_CHECKING:
    import torch


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


def third_party(obj: Any) -> Provider | None:
    """The provider of ``obj`` when a third-party plugin registered it, else None."""
    prov = provider_of(obj)
    return prov if prov is not None and not prov.builtin else None


def failure(prov: Provider, what: str, exc: BaseException, module: str | None = None) -> PluginError:
    """``plugin 'P' (dist) failed in WHAT of KIND 'NAME': ExcType: first line``.

    With ``module`` (the plugin class's module), WHAT is the plugin's own function the traceback
    went through first (``LowOnlyProbe.sources()`` rather than ``run()``), when there is one.
    """
    if module:
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_globals.get("__name__") == module:
                code = tb.tb_frame.f_code
                what = f"{getattr(code, 'co_qualname', code.co_name)}()"
                break
            tb = tb.tb_next
    return PluginError(f"{prov.who()} failed in {what} of {prov.label} '{prov.name}': {_first_line(exc)}")


@contextlib.contextmanager
def guarded(obj: Any, what: str):
    """Turn an unexpected exception of ``obj`` (a registered third-party class or instance) into a PluginError."""
    try:
        yield
    except FreqprobeError:
        raise
    except Exception as exc:
        prov = third_party(obj)
        if prov is None:
            raise
        cls = obj if isinstance(obj, type) else type(obj)
        raise failure(prov, what, exc, cls.__module__) from exc


def call(obj: Any, what: str, fn, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` guarded as :func:`guarded` (``obj`` names the plugin)."""
    with guarded(obj, what):
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------- hooks
def _hook_plugin(pm, impl) -> tuple[str, str] | None:
    name = pm.get_name(impl.plugin)
    if is_builtin(name):
        return None
    dist = getattr(pm, "dists", {}).get(name)
    return name, (f" ({dist})" if dist else "")


@contextlib.contextmanager
def hook_guarded(pm, impl, what: str):
    """As :func:`guarded`, for one hook implementation ``impl`` (a pluggy HookImpl)."""
    try:
        yield
    except FreqprobeError:
        raise
    except Exception as exc:
        who = _hook_plugin(pm, impl)
        if who is None:
            raise
        raise PluginError(f"plugin {who[0]!r}{who[1]} failed in {what}: {_first_line(exc)}") from exc


def call_hook(pm, hook: str, **kwargs: Any) -> list:
    """Call every implementation of a broadcast hook separately, guarded; their non-None results.

    Same order as pluggy (last registered first). A hook with wrappers is called through pluggy.
    """
    caller = getattr(pm.hook, hook)
    impls = caller.get_hookimpls()
    if any(getattr(i, "hookwrapper", False) or getattr(i, "wrapper", False) for i in impls):
        return caller(**kwargs)
    out = []
    for impl in reversed(impls):
        with hook_guarded(pm, impl, f"{hook}()"):
            got = impl.function(**{a: kwargs[a] for a in impl.argnames if a in kwargs})
        if got is not None:
            out.append(got)
    return out


# ------------------------------------------------------------------------- decomposers
def _who(dec: Any) -> str:
    prov = provider_of(dec)
    name = getattr(dec, "name", type(dec).__name__)
    if prov is None:
        return f"decomposer '{name}' ({type(dec).__module__}.{type(dec).__qualname__})"
    return f"decomposer '{name}' from {'built-in ' + prov.plugin if prov.builtin else prov.who()}"


def check_components(dec: Any, x: torch.Tensor, got: Any, param: Any, what: str = "decompose()") -> Mapping[str, torch.Tensor]:
    """Refuse, in one line, a decomposer result that is not ``{declared component: tensor like x}``."""
    import torch

    comps = tuple(dec.components)
    at = f"{getattr(dec, 'param_name', 'param')}={param!r}"
    if not isinstance(got, Mapping):
        raise PluginError(f"{_who(dec)}: {what} must return a dict {{component: tensor}}, got {type(got).__name__} at {at}")
    if set(got) != set(comps):
        raise PluginError(f"{_who(dec)} declares components {comps} but {what} returned {tuple(got)} at {at}; "
                          f"return exactly the declared components (or change `components`)")
    for c in comps:
        t = got[c]
        if not isinstance(t, torch.Tensor):
            raise PluginError(f"{_who(dec)}: {what} returned component '{c}' as a {type(t).__name__}, not a torch.Tensor, at {at}")
        if t.shape != x.shape:
            raise PluginError(f"{_who(dec)}: {what} returned component '{c}' of shape {tuple(t.shape)} for input of shape "
                              f"{tuple(x.shape)} at {at}; every component must have the input's N×C×H×W shape")
        if not t.is_floating_point():
            raise PluginError(f"{_who(dec)}: {what} returned component '{c}' of dtype {t.dtype} at {at}; "
                              f"components must be floating-point tensors")
        if t.device != x.device:
            raise PluginError(f"{_who(dec)}: {what} returned component '{c}' on {t.device} for input on {x.device} at {at}; "
                              f"return components on the input's device")
    return got


def decompose(dec: Any, x: torch.Tensor, param: Any, *, out: Mapping[str, torch.Tensor] | None = None) -> dict:
    """``dec.decompose(x, param)``, guarded and checked."""
    with guarded(dec, "decompose()"):
        got = dec.decompose(x, param) if out is None else dec.decompose(x, param, out=out)
    return check_components(dec, x, got, param)


_END = object()


def decompose_all(dec: Any, x: torch.Tensor, params: Sequence[Any], *, out: Any = None) -> Iterator[tuple[Any, Mapping]]:
    """``dec.decompose_all(x, params, out=out)``, guarded and checked: every parameter once, each result checked."""
    params = list(params)
    own = getattr(type(dec), "decompose_all", None) is not Decomposer.decompose_all
    what = "decompose_all()" if own else "decompose()"
    with guarded(dec, what):
        it = iter(dec.decompose_all(x, params, out=out))
    wanted = set(params)
    seen = set()
    while True:
        with guarded(dec, what):
            item = next(it, _END)
        if item is _END:
            break
        if not (isinstance(item, tuple) and len(item) == 2):
            raise PluginError(f"{_who(dec)}: decompose_all() must yield (param, components) pairs, got {type(item).__name__}")
        p, parts = item
        if p not in wanted:
            raise PluginError(f"{_who(dec)}: decompose_all() yielded parameter {p!r}, which was not asked for ({params})")
        check_components(dec, x, parts, p, what)
        seen.add(p)
        yield p, parts
    missing = [p for p in params if p not in seen]
    if missing:
        raise PluginError(f"{_who(dec)}: decompose_all() yielded nothing for {getattr(dec, 'param_name', 'param')}={missing[0]!r}; "
                          f"it must yield (param, components) for every parameter it is given")


__all__ = ["call", "call_hook", "check_components", "decompose", "decompose_all", "failure", "guarded",
           "hook_guarded", "third_party"]

