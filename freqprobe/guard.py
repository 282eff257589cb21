"""Calls into plugin code, guarded: a third-party plugin's exception becomes a one-line PluginError.

``plugin 'boxplug' (boxplug 1.0) failed in decompose() of decomposer 'box': ValueError: ...``

Only classes a third-party plugin registered (see :func:`freqprobe.registry.provider_of`) are
wrapped: a built-in's bug and a Python user's own object keep their traceback. FreqprobeErrors
(a plugin's :class:`~freqprobe.errors.UserFacingError`) pass through unchanged, and so do
``KeyboardInterrupt`` and ``SystemExit``. The original exception stays chained (``__cause__``);
``freqprobe -vv`` prints its traceback.

The decomposer helpers also check what a decomposer returns: its declared components, tensors of
the input's shape, device and a floating dtype (every decomposer, without a pass over the data);
and for a decomposer that is not built in, on every call, that the parts are finite and sum back to
the input (:func:`check_values`; ``additive = False``: finiteness only). :func:`describe` names the
class and its provider in the messages of these checks (the attacks' and the metrics' too).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from .errors import FreqprobeError, PluginError
from .interfaces import Decomposer, describe
from .manager import PROVIDER_ATTR, Provider, is_builtin, provider_of

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
#: how far the parts may sum away from the input, as a fraction of the image range (max − min), by dtype;
#: the testing kit's check_decomposer uses the same (float16/bfloat16: 1e-2)
SUM_RTOL = {"float64": (1e-10, "1e-10"), "float32": (1e-4, "1e-4")}
HALF_RTOL = (1e-2, "1e-2")


def _who(dec: Any) -> str:
    return describe(dec, "decomposer")


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else repr(v)


def verified(dec: Any) -> bool:
    """Whether ``dec`` is a built-in decomposer, whose results are not re-checked per call.

    The built-ins are verified by the test suite against an independent float64 reference; any
    other decomposer (a plugin's, a subclass of a built-in, an object nobody registered) has its
    values checked on every call (:func:`check_components`). Only the class itself counts, not a base.
    """
    prov = type(dec).__dict__.get(PROVIDER_ATTR)
    return isinstance(prov, Provider) and prov.builtin


def check_components(dec: Any, x: torch.Tensor, got: Any, param: Any, what: str = "decompose()") -> Mapping[str, torch.Tensor]:
    """Refuse, in one line, a decomposer result that is not ``{declared component: tensor like x}``.

    For a decomposer that is not built in (:func:`verified`) the values are checked too, on every
    call: finite (when ``x`` is), and — unless the class sets ``additive = False`` — summing back to
    ``x`` within :data:`SUM_RTOL` of its range. Every call, because a buffer a decomposer forgets to
    write (the loop reuses its buffers from batch to batch) shows only in the batch it spoils.
    """
    import torch

    comps = tuple(dec.components)
    at = f"{getattr(dec, 'param_name', 'param')}={_fmt(param)}"
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
    if not verified(dec):
        check_values(dec, x, [got[c] for c in comps], at, what)
    return got


def check_values(dec: Any, x: torch.Tensor, parts: Sequence[torch.Tensor], at: str, what: str = "decompose()") -> None:
    """Refuse non-finite parts (of a finite ``x``) and, for an additive decomposer, parts that do not sum back to ``x``.

    Additive: one pass over the parts (their sum minus ``x``, whose largest magnitude is NaN/inf when
    any part is) and one over ``x`` (its range), one host synchronisation; the parts are looked at
    one by one only to word a refusal. In float32 the sum's own rounding (~1e-7) is far below the
    tolerance; float16/bfloat16 are summed in float32.
    """
    import torch

    if x.numel() == 0:
        return
    additive = bool(getattr(dec, "additive", True))
    err = math.nan
    with torch.no_grad():
        if additive:
            err, rng = _sum_error(x, parts)
            if math.isfinite(err) and math.isfinite(rng):
                rtol, shown = SUM_RTOL.get(str(x.dtype).replace("torch.", ""), HALF_RTOL)
                tol = rtol * (rng or 1.0)
                if not err <= tol:
                    raise PluginError(f"{_who(dec)}: the parts do not sum back to the input at {at} (max error {err:.2g} > "
                                      f"{tol:.2g}, {shown} of the image range); a decomposer whose parts are not additive "
                                      "sets additive = False")
                return
        flags = torch.stack([torch.isfinite(x).all()] + [torch.isfinite(t).all() for t in parts]).tolist()
    if not flags[0]:
        return  # a non-finite input is not the decomposer's doing (the model's non-finite outputs are reported)
    for c, ok in zip(dec.components, flags[1:]):
        if not ok:
            raise PluginError(f"{_who(dec)}: {what} returned NaN or inf in component '{c}' at {at} for finite input")
    if additive:  # finite parts whose sum overflows
        raise PluginError(f"{_who(dec)}: the parts do not sum back to the input at {at} (their sum is {err}); a decomposer "
                          "whose parts are not additive sets additive = False")


def _sum_error(x: torch.Tensor, parts: Sequence[torch.Tensor]) -> tuple[float, float]:
    """max |Σ parts − x| and the range of ``x`` (half precision summed in float32), in one synchronisation."""
    import torch

    half = x.dtype in (torch.float16, torch.bfloat16)
    total = parts[0].float() if half else parts[0]
    total = total + parts[1] if len(parts) > 1 else total.clone()
    for t in parts[2:]:
        total.add_(t)
    err = total.sub_(x).abs_().max()
    lo, hi = torch.aminmax(x)
    err, rng = torch.stack([err.double(), hi.double() - lo.double()]).tolist()
    return err, rng


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


__all__ = ["call", "call_hook", "check_components", "check_values", "decompose", "decompose_all", "describe", "failure",
           "guarded", "hook_guarded", "third_party", "verified"]

