"""Test kit for freqprobe plugins: pytest fixtures and conformance checks, one per kind.

Installed with freqprobe, this package is a pytest plugin (entry point ``freqprobe`` in the
``pytest11`` group): every project's tests get the fixtures without any ``conftest.py`` line.
Switch it off with ``pytest -p no:freqprobe``. It is a top-level package of its own (import it as
``freqprobe.testing``, which re-exports it) so that pytest's start-up does not import freqprobe
and torch in projects that never use the fixtures.

Fixtures (all prefixed ``freqprobe_``, so they never clash with a project's own):

* ``freqprobe_pm`` -- a fresh plugin manager with only the built-ins; add yours with
  ``freqprobe_pm.register(my_hooks_module, "myplugin")``;
* ``freqprobe_images`` -- a deterministic 4×3×32×32 float32 batch in [0, 1] (smooth gradients
  and waves plus a checkerboard and a little noise: both low and high parts are non-trivial);
* ``freqprobe_classifier`` -- a tiny deterministic CNN (10 classes, eval mode) as a
  :class:`freqprobe.ModelAdapter` that normalises inside;
* ``freqprobe_labels`` -- the classifier's own predictions on ``freqprobe_images`` (accuracy on
  the originals is 1.0).

Checks (plain functions; each raises ``AssertionError`` saying what is wrong):
:func:`check_decomposer`, :func:`check_attack`, :func:`check_metric`.

A plugin author's test::

    import freqprobe
    from freqprobe.testing import check_attack, check_decomposer, check_metric
    from freqprobe_myplugin.hooks import MyAttack, MyDecomposer, MyMetric


    def test_my_decomposer(freqprobe_images):
        check_decomposer(MyDecomposer, freqprobe_images, params=[4, 8])


    def test_my_attack(freqprobe_classifier, freqprobe_images, freqprobe_labels):
        check_attack(MyAttack, freqprobe_classifier, freqprobe_images, freqprobe_labels, eps=8 / 255)


    def test_my_metric(freqprobe_classifier, freqprobe_images, freqprobe_labels):
        check_metric(MyMetric, freqprobe_classifier.predict(freqprobe_images), freqprobe_labels)


    def test_registered(freqprobe_pm):
        import freqprobe_myplugin.hooks

        freqprobe_pm.register(freqprobe_myplugin.hooks, "myplugin")
        assert "my-decomposer" in freqprobe.collect("decomposers", freqprobe_pm)

Tests marked ``@pytest.mark.freqprobe_conformance`` can be selected with
``pytest -m freqprobe_conformance``.

This package is imported at pytest start-up wherever freqprobe is installed: keep it free of
work at import time (torch and freqprobe are imported inside the functions).
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable, Mapping

import pytest

__all__ = [
    "check_attack",
    "check_decomposer",
    "check_evaluator",
    "check_metric",
    "make_classifier",
    "make_images",
]

#: float32: the parts must sum back to the input within this fraction of the image range
#: (the core checks a plugin's decomposer with the same: ``freqprobe.guard.SUM_RTOL``)
FLOAT32_RTOL = 1e-4
#: float64: the same, in double precision
FLOAT64_RTOL = 1e-10
#: how far outside the ε-ball an attack may land (rounding; the core's ``freqprobe.interfaces.EPS_TOL``,
#: in L2 plus ``L2_RTOL`` × eps for the float32 rounding of a norm over many pixels)
EPS_TOL = 1e-6
L2_RTOL = 1e-4
#: metric results that must agree (merge, reset, state round trip) agree to this
METRIC_TOL = 1e-12


# -- pytest hooks and fixtures ---------------------------------------------------------------


def pytest_configure(config):
    """Register the ``freqprobe_conformance`` marker (``pytest -m freqprobe_conformance``)."""
    config.addinivalue_line(
        "markers", "freqprobe_conformance: a freqprobe plugin conformance check (freqprobe.testing)"
    )


@pytest.fixture
def freqprobe_pm():
    """A fresh plugin manager with only freqprobe's built-ins (no entry-point plugins).

    Add the plugin under test with ``freqprobe_pm.register(my_hooks_module, "myplugin")`` and pass
    ``pm=freqprobe_pm`` to ``freqprobe.collect``, ``freqprobe.decompose`` or ``freqprobe.run``.
    """
    from freqprobe import get_plugin_manager

    return get_plugin_manager(autoload=False)


@pytest.fixture
def freqprobe_images():
    """A deterministic 4×3×32×32 float32 batch in [0, 1] with smooth and fine structure (:func:`make_images`)."""
    return make_images()


@pytest.fixture
def freqprobe_classifier():
    """A tiny deterministic CNN with 10 classes in eval mode, as a ``freqprobe.ModelAdapter`` (:func:`make_classifier`)."""
    return make_classifier()


@pytest.fixture
def freqprobe_labels(freqprobe_classifier, freqprobe_images):
    """``freqprobe_classifier``'s predictions on ``freqprobe_images`` (int64, shape (4,)): accuracy 1.0 on the originals."""
    return freqprobe_classifier.predict(freqprobe_images).argmax(-1)


# -- builders ----------------------------------------------------------------------------------


def make_images(n: int = 4, channels: int = 3, size: int = 32, *, seed: int = 0, dtype=None):
    """A deterministic N×C×size×size batch in [0, 1] (float32 unless ``dtype``).

    Each image is a smooth part (a random linear gradient plus one slow wave per channel, in
    about [0.15, 0.85]) plus a fine part (a ±0.12 pixel checkerboard and ±0.04 uniform noise),
    clamped to [0, 1]; the same ``seed`` always gives the same images.
    """
    import math

    import torch

    g = torch.Generator().manual_seed(int(seed))
    f64 = torch.float64
    idx = torch.arange(size, dtype=f64)
    t = idx / max(size - 1, 1)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    checker = ((idx.view(-1, 1) + idx.view(1, -1)) % 2) * 2 - 1
    slope = torch.rand(n, channels, 2, 1, 1, generator=g, dtype=f64) * 2 - 1
    phase = torch.rand(n, channels, 2, 1, 1, generator=g, dtype=f64)
    smooth = (
        0.5
        + 0.2 * (slope[:, :, 0] * (xx - 0.5) + slope[:, :, 1] * (yy - 0.5))
        + 0.15 * torch.sin(2 * math.pi * (xx + phase[:, :, 0])) * torch.cos(2 * math.pi * (yy + phase[:, :, 1]))
    )
    noise = torch.rand(n, channels, size, size, generator=g, dtype=f64) * 2 - 1
    x = (smooth + 0.12 * checker + 0.04 * noise).clamp_(0, 1)
    return x.to(dtype or torch.float32)


def make_classifier(num_classes: int = 10, channels: int = 3, *, seed: int = 0):
    """A tiny CNN (conv-BN-ReLU, strided conv-ReLU, 4×4 average pool, linear) in eval mode, as a ``ModelAdapter``.

    Weights come from ``seed`` without touching the global random state; the adapter normalises
    with mean 0.5 and std 0.25 per channel, so attacks go through a normalisation as with real models.
    """
    import torch
    from torch import nn

    from freqprobe import ClassifierAdapter

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        module = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, num_classes),
        )
        nn.init.zeros_(module[-1].bias)  # no bias: the predictions depend on the image (not all one class)
    module.eval()
    return ClassifierAdapter(module, mean=(0.5,) * channels, std=(0.25,) * channels, spec="freqprobe.testing:tiny-cnn",
                        info={"num_classes": num_classes})


# -- helpers -----------------------------------------------------------------------------------


def _call(where: str, what: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; an exception becomes an AssertionError naming the call (chained to the original)."""
    try:
        return fn(*args, **kwargs)
    except AssertionError:
        raise
    except Exception as exc:
        raise AssertionError(f"{where}: {what} raised {type(exc).__name__}: {exc}") from exc


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else repr(v)


def _nanmax(values: Iterable[float]) -> float:
    """The largest of ``values``, NaN when any is NaN (Python's ``max`` keeps a NaN only when it comes first)."""
    import math

    values = list(values)
    if any(math.isnan(v) for v in values):
        return math.nan
    return max(values)


def _close(a: Any, b: Any, tol: float) -> bool:
    """Numbers equal within ``tol`` (NaN equals NaN)."""
    import math

    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b or abs(a - b) <= tol


def _same(a: Any, b: Any) -> bool:
    """Structural equality of metric states: tensors by value (on the CPU), containers element-wise, NaN == NaN."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            try:
                return _close(a, b, 0.0)
            except (TypeError, ValueError, RuntimeError):
                return False
        a, b = a.detach().cpu(), b.detach().cpu()
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
        return torch.equal(a, b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        try:
            return _close(a, b, 0.0)
        except (TypeError, ValueError):
            return False
    return a == b


def _results_diff(want: Mapping[str, float], got: Mapping[str, float], tol: float) -> str | None:
    """Why two ``Metric.results()`` dicts differ, or None."""
    if set(want) != set(got):
        return f"result keys {sorted(got)} instead of {sorted(want)}"
    bad = [k for k in want if not _close(want[k], got[k], tol)]
    if bad:
        return "; ".join(f"{k}={got[k]!r} instead of {want[k]!r}" for k in bad)
    return None


def _accepts_out(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "out" or p.kind is p.VAR_KEYWORD for p in params)


# -- decomposers -------------------------------------------------------------------------------


def check_decomposer(cls_or_instance, images=None, params: Iterable[Any] | None = None):
    """Check a :class:`freqprobe.Decomposer` (a class, built without options, or an instance) against its contract.

    ``images`` default to :func:`make_images` (a 4×3×32×32 float32 batch; the device of the
    images you pass is the one checked), ``params`` to the decomposer's ``default_params``
    (normalised with ``check_param``). Asserts that:

    * the class would be registered (a kebab-case ``name``, ``components``, ``default_params``);
    * ``decompose(x, p)`` returns a mapping with exactly the declared ``components``, each a
      floating-point tensor with ``x``'s shape, dtype and device, for float32 and float64 input;
    * the parts are finite and sum back to ``x``: max abs error <= 1e-4 × the image range in
      float32 and <= 1e-10 × the range in float64 (the tolerance the core checks a plugin's
      decomposer with on every call); a class with ``additive = False`` is checked for finite
      parts only;
    * ``x`` itself is left unchanged;
    * the same call twice gives the same parts (bit for bit on the CPU);
    * ``decompose_all(x, params)`` yields every parameter once, with the parts ``decompose`` gives
      (within the float32 tolerance);
    * when ``decompose`` accepts ``out=``: NaN-filled buffers passed to ``decompose`` and to
      ``decompose_all`` (one mapping shared by all parameters, and one mapping per parameter) give
      the same parts — a component left unwritten shows as NaN (every comparison is NaN-aware).

    Returns the decomposer instance.
    """
    import torch

    from freqprobe import Decomposer, registry

    if inspect.isclass(cls_or_instance):
        cls = cls_or_instance
        where = f"check_decomposer({getattr(cls, 'name', cls.__qualname__)!r})"
        if not issubclass(cls, Decomposer):
            raise AssertionError(f"{where}: {cls.__qualname__} is not a subclass of freqprobe.Decomposer")
        dec = _call(where, f"{cls.__qualname__}()", cls)
    else:
        dec = cls_or_instance
        cls = type(dec)
        where = f"check_decomposer({getattr(cls, 'name', cls.__qualname__)!r})"
        if not isinstance(dec, Decomposer):
            raise AssertionError(f"{where}: {dec!r} is not a freqprobe.Decomposer")
    why = registry._problem("decomposers", registry.KINDS["decomposers"], cls)
    if why:
        raise AssertionError(f"{where}: registration would refuse it: {why}")
    comps = tuple(dec.components)
    pname = dec.param_name
    given = dec.default_params if params is None else list(params)
    params = _call(where, f"check_params({list(given)!r})", dec.check_params, given)
    if not params:
        raise AssertionError(f"{where}: no parameters to check")
    x = make_images() if images is None else images
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise AssertionError(f"{where}: images must be an N×C×H×W floating-point tensor, got "
                             f"{type(x).__name__}{tuple(x.shape) if isinstance(x, torch.Tensor) else ''}")
    x = x.to(torch.float32)
    rng = float(x.max() - x.min()) or 1.0
    tol32 = FLOAT32_RTOL * rng
    exact = x.device.type == "cpu"

    def parts_of(got, at: str, like: torch.Tensor, call: str) -> dict:
        if not isinstance(got, Mapping):
            raise AssertionError(f"{where} at {at}: {call} returned {type(got).__name__}, not a {{component: tensor}} mapping")
        if tuple(sorted(got)) != tuple(sorted(comps)):
            raise AssertionError(f"{where} at {at}: {call} returned components {tuple(got)} but the class declares {comps}")
        for c in comps:
            t = got[c]
            if not isinstance(t, torch.Tensor):
                raise AssertionError(f"{where} at {at}: {call}: component {c!r} is a {type(t).__name__}, not a tensor")
            if t.shape != like.shape:
                raise AssertionError(f"{where} at {at}: {call}: component {c!r} has shape {tuple(t.shape)}, the input {tuple(like.shape)}")
            if t.dtype != like.dtype:
                raise AssertionError(f"{where} at {at}: {call}: component {c!r} is {t.dtype}, the input {like.dtype} (dtype must be preserved)")
            if t.device != like.device:
                raise AssertionError(f"{where} at {at}: {call}: component {c!r} is on {t.device}, the input on {like.device}")
        return {c: got[c] for c in comps}

    additive = bool(getattr(dec, "additive", True))

    def check_sum(parts: dict, like: torch.Tensor, at: str, tol: float, rtol: float) -> None:
        bad = [c for c in comps if not bool(torch.isfinite(parts[c]).all())]
        if bad:
            raise AssertionError(f"{where} at {at}: component {bad[0]!r} holds NaN or inf")
        if not additive:  # additive = False: the parts are only checked to be finite (as the core does)
            return
        total = sum(parts[c].double() for c in comps)
        err = float((total - like.double()).abs().max())
        if not err <= tol:  # NaN fails too
            raise AssertionError(
                f"{where} at {at}: the components {comps} do not sum back to the input: max abs error {err:.3g} > "
                f"{tol:.3g} ({rtol:g} × the image range {rng:.3g}); a decomposer whose parts are not additive sets "
                "additive = False")

    def max_diff(a: dict, b: dict) -> float:
        """The largest difference of any component; NaN when any component differs by NaN (a buffer left unwritten)."""
        return _nanmax(float((a[c].double() - b[c].double()).abs().max()) for c in comps)

    def unwritten(got: dict) -> str:
        """Which component holds NaN where the reference has none: the NaN-filled buffer it was given, left as it was."""
        for c in comps:
            if not bool(torch.isfinite(got[c]).all()):
                return f" (component {c!r} holds NaN: the NaN-filled out= buffer was not written?)"
        return ""

    keep = x.clone()
    ref: dict = {}
    for dtype, rtol in ((torch.float32, FLOAT32_RTOL), (torch.float64, FLOAT64_RTOL)):
        xd = x if dtype == torch.float32 else x.double()
        kept = xd.clone()
        for p in params:
            at = f"{pname}={_fmt(p)} ({str(dtype).replace('torch.', '')})"
            parts = parts_of(_call(where, f"decompose(x, {_fmt(p)})", dec.decompose, xd, p), at, xd, "decompose()")
            if not torch.equal(xd, kept):
                raise AssertionError(f"{where} at {at}: decompose() changed its input x in place")
            parts = {c: t.clone() for c, t in parts.items()}
            check_sum(parts, xd, at, rtol * rng, rtol)
            again = parts_of(_call(where, f"decompose(x, {_fmt(p)})", dec.decompose, xd, p), at, xd, "decompose()")
            d = max_diff(parts, again)
            if not (d == 0.0 if exact else d <= rtol * rng):
                raise AssertionError(f"{where} at {at}: not deterministic: a second decompose() of the same input "
                                     f"differs by up to {d:.3g}")
            if dtype == torch.float32:
                ref[p] = parts

    # decompose_all agrees with decompose, yielding every parameter once
    def check_all(out, what: str) -> None:
        seen = []
        kwargs = {} if out is None else {"out": out}
        it = _call(where, what, lambda: iter(dec.decompose_all(x, list(params), **kwargs)))
        while True:
            try:
                item = next(it)
            except StopIteration:
                break
            except Exception as exc:
                raise AssertionError(f"{where}: {what} raised {type(exc).__name__}: {exc}") from exc
            if not (isinstance(item, tuple) and len(item) == 2):
                raise AssertionError(f"{where}: {what} yielded {type(item).__name__}, not (param, components) pairs")
            p, got = item
            if p not in ref:
                raise AssertionError(f"{where}: {what} yielded {pname}={_fmt(p)}, which was not asked for "
                                     f"(asked: {', '.join(map(_fmt, params))})")
            if p in seen:
                raise AssertionError(f"{where}: {what} yielded {pname}={_fmt(p)} twice")
            seen.append(p)
            at = f"{pname}={_fmt(p)} (float32)"
            got = {c: t.clone() for c, t in parts_of(got, at, x, what).items()}  # shared buffers: consume now
            d = max_diff(ref[p], got)
            if not d <= tol32:
                raise AssertionError(f"{where} at {at}: {what} differs from decompose() by up to {d:.3g} "
                                     f"(tolerance {tol32:.3g}){unwritten(got)}")
        missing = [p for p in params if p not in seen]
        if missing:
            raise AssertionError(f"{where}: {what} did not yield {', '.join(f'{pname}={_fmt(p)}' for p in missing)}")

    check_all(None, "decompose_all(x, params)")
    if _accepts_out(dec.decompose):
        def buffers() -> dict:
            return {c: torch.full_like(x, float("nan")) for c in comps}

        for p in params:
            at = f"{pname}={_fmt(p)} (float32)"
            got = parts_of(_call(where, f"decompose(x, {_fmt(p)}, out=...)", dec.decompose, x, p, out=buffers()),
                           at, x, "decompose(out=...)")
            d = max_diff(ref[p], got)
            if not d <= tol32:
                raise AssertionError(f"{where} at {at}: decompose() with out= buffers differs from decompose() without "
                                     f"by up to {d:.3g} (tolerance {tol32:.3g}){unwritten(got)}")
        check_all(buffers(), "decompose_all(x, params, out={component: buffer}) (one mapping shared by every parameter)")
        check_all({p: buffers() for p in params}, "decompose_all(x, params, out={param: {component: buffer}})")
    if not torch.equal(x, keep):
        raise AssertionError(f"{where}: the input images were changed in place")
    return dec


# -- attacks -----------------------------------------------------------------------------------


def check_attack(cls, adapter, images, labels, eps: float = 8 / 255, **options):
    """Check a :class:`freqprobe.Attack` subclass on ``adapter`` (a ``ModelAdapter``), ``images`` and ``labels``.

    Builds ``cls(adapter, eps=eps, seed=0, **options)`` and asserts that ``attack(images, labels)``:

    * returns a tensor of the images' shape, dtype and device, finite and within [0, 1];
    * stays in the ε-ball around the images: per sample ``max |adv − x| <= eps + 1e-6`` (L∞) or
      ``‖adv − x‖₂ <= eps·(1 + 1e-4) + 1e-6`` (L2), in the attack's ``budget_norm()``: its option
      ``norm`` when it has one, else its class attribute ``norm`` (default ``"linf"``);
    * is deterministic: the same instance again, and a new instance with the same seed, give the
      same images (bit for bit on the CPU), and so does a call inside ``torch.inference_mode()``
      (how the evaluation loop calls attacks);
    * leaves its input alone: ``forward`` does not change the images and labels passed in, nor
      the model's parameters, their ``requires_grad`` flags and its train/eval mode.

    These are the rules the core applies to every attack's answer in a run
    (``freqprobe.interfaces.adversarial_problem``, the same tolerance and the same norm rule): an
    attack that fails them here fails a run with a ``PluginError``.

    Returns the adversarial images.
    """
    import torch

    from freqprobe.interfaces import ATTACK_NORMS, Attack, adversarial_problem

    where = f"check_attack({getattr(cls, 'name', getattr(cls, '__qualname__', cls))!r}{''.join(f', {k}={v!r}' for k, v in options.items())})"
    if not (inspect.isclass(cls) and issubclass(cls, Attack)):
        raise AssertionError(f"{where}: {cls!r} is not a subclass of freqprobe.Attack")
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise AssertionError(f"{where}: images must be a floating-point tensor of [0, 1] images")
    if not isinstance(labels, torch.Tensor):
        raise AssertionError(f"{where}: labels must be a tensor of class indices, got {type(labels).__name__}")
    module = adapter.module
    params_before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    grads_before = [p.requires_grad for p in module.parameters()]
    modes_before = [m.training for m in module.modules()]
    x_keep, y_keep = images.clone(), labels.clone()

    attack = _call(where, f"{cls.__qualname__}(adapter, eps={eps!r}, seed=0, ...)", cls, adapter, eps=eps, seed=0, **options)
    norm = attack.budget_norm()  # the rule the core applies: the option `norm`, else the class attribute
    if norm not in ATTACK_NORMS:
        raise AssertionError(f"{where}: check_attack knows the norms {', '.join(ATTACK_NORMS)}, not {norm!r}")
    # forward itself on the caller's tensors (attack(...) hands it copies): it must not change them
    with torch.inference_mode(False), torch.enable_grad():
        _call(where, "forward(images, labels)", attack.forward, images, labels)
    if not torch.equal(images, x_keep):
        raise AssertionError(f"{where}: changed the input images in place")
    if not torch.equal(labels, y_keep):
        raise AssertionError(f"{where}: changed the labels in place")
    # the call the evaluation loop makes, which checks the answer (a PluginError here is the core refusing it)
    adv = _call(where, "attack(images, labels)", attack, images, labels)
    why = adversarial_problem(images, adv, eps, norm)  # the same rules, for an attack that overrides __call__
    if why is not None:
        raise AssertionError(f"{where}: {why}")

    tol = 0.0 if images.device.type == "cpu" else 1e-5

    def same_as_first(other, what: str) -> None:
        if not isinstance(other, torch.Tensor) or other.shape != adv.shape:
            raise AssertionError(f"{where}: {what} returned something else than the first call")
        d = float((other.double() - adv.double()).abs().max()) if adv.numel() else 0.0
        if not d <= tol:
            raise AssertionError(f"{where}: not deterministic: {what} differs from the first call by up to {d:.3g} "
                                 "(seed the random start from self.seed at every call)")

    same_as_first(_call(where, "a second call", attack, images, labels), "a second call of the same instance")
    again = _call(where, f"{cls.__qualname__}(adapter, eps={eps!r}, seed=0, ...)", cls, adapter, eps=eps, seed=0, **options)
    same_as_first(_call(where, "a new instance with the same seed", again, images, labels), "a new instance with the same seed")
    with torch.inference_mode():
        inf = _call(where, "a call inside torch.inference_mode() (as the evaluation loop makes it)", again, images, labels)
    same_as_first(inf, "a call inside torch.inference_mode()")

    after = module.state_dict()
    changed = [k for k, v in params_before.items() if k not in after or not torch.equal(after[k], v)]
    if changed:
        raise AssertionError(f"{where}: changed the model's parameters or buffers: {', '.join(changed[:5])}")
    if [p.requires_grad for p in module.parameters()] != grads_before:
        raise AssertionError(f"{where}: did not restore the model parameters' requires_grad flags")
    if [m.training for m in module.modules()] != modes_before:
        raise AssertionError(f"{where}: changed the model's train/eval mode")
    return adv


# -- metrics -----------------------------------------------------------------------------------


def check_metric(cls, outputs, targets, *, mergeable: bool = True):
    """Check a :class:`freqprobe.Metric` subclass on one batch of ``outputs`` and ``targets``.

    The metric is built as the evaluation loop builds it (``cls(ctx)`` with ``ctx=None``, or
    ``cls()``), then ``reset()``. ``outputs`` and ``targets`` (tensors or lists with at least two
    samples) are cut into two halves along the first dimension. Asserts that (results compared
    with ``results()``, to 1e-12, NaN equal to NaN):

    * updating with the halves one after the other equals updating with all the data at once;
    * two instances updated with one half each, ``merge``-d (the other instance, and its pickled
      ``state()`` dict), equal the instance that saw all the data;
    * ``reset()`` restores: the state equals a fresh instance's, and updating again gives the
      same result as the first time;
    * ``state()`` survives pickling and ``load_state()`` into a fresh instance gives the same
      ``state()`` and results, and updating that instance leaves the saved state untouched.

    ``mergeable=False`` is for a metric that declares no state with ``add_state`` (it cannot be
    merged or resumed from a checkpoint): only the update and reset checks run. Returns the results.
    """
    import pickle

    from freqprobe import Metric

    where = f"check_metric({getattr(cls, 'name', getattr(cls, '__qualname__', cls))!r})"
    if not (inspect.isclass(cls) and issubclass(cls, Metric)):
        raise AssertionError(f"{where}: {cls!r} is not a subclass of freqprobe.Metric")
    n = len(outputs)
    if n < 2 or len(targets) != n:
        raise AssertionError(f"{where}: pass at least two samples, as many outputs ({n}) as targets ({len(targets)})")
    h = n // 2
    first, second = (outputs[:h], targets[:h]), (outputs[h:], targets[h:])

    def build():
        m = _call(where, "building it (cls(ctx) or cls())", Metric.build, cls, None, None)
        _call(where, "reset()", m.reset)
        return m

    def results(m, what: str) -> dict:
        got = _call(where, f"compute() {what}", m.results)
        if not got:
            raise AssertionError(f"{where}: compute() {what} returned no numbers")
        return got

    def update(m, data, what: str) -> None:
        _call(where, f"update() with {what}", m.update, *data)

    def expect(got: dict, want: dict, what: str) -> None:
        why = _results_diff(want, got, METRIC_TOL)
        if why:
            raise AssertionError(f"{where}: {what}: {why}")

    full = build()
    update(full, (outputs, targets), "all the data")
    want = results(full, "after one update with all the data")

    seq = build()
    update(seq, first, "the first half")
    update(seq, second, "the second half")
    expect(results(seq, "after two updates"), want, "updating with two halves in turn is not the same as updating once with all the data")

    # reset restores
    fresh = build()
    empty = results(fresh, "of a fresh instance")
    _call(where, "reset()", seq.reset)
    expect(results(seq, "after reset()"), empty, "reset() did not restore a fresh instance's result")
    if mergeable and not _same(seq.state(), fresh.state()):
        raise AssertionError(f"{where}: reset() did not restore a fresh instance's state(): {seq.state()!r} instead of {fresh.state()!r}")
    update(seq, (outputs, targets), "all the data after reset()")
    expect(results(seq, "after reset() and an update"), want, "after reset() the same data gives another result (state left over?)")

    if not mergeable:
        return want
    if not full.__dict__.get("_states"):
        raise AssertionError(
            f"{where}: declares no state with add_state(), so partial results cannot merge (sharded runs) nor resume from "
            "a state() checkpoint; declare the state with self.add_state(name, default, reduce=...), or pass mergeable=False")

    # merge two halves
    a, b = build(), build()
    update(a, first, "the first half")
    update(b, second, "the second half")
    saved_b = _call(where, "state()", b.state)
    _call(where, "merge(other)", a.merge, b)
    expect(results(a, "after merge()"), want, "merging an instance that saw the first half with one that saw the second "
                                              "is not the same as one instance seeing all the data")
    a2 = build()
    update(a2, first, "the first half")
    shipped = _call(where, "pickling state()", lambda: pickle.loads(pickle.dumps(saved_b)))
    _call(where, "merge(state dict)", a2.merge, shipped)
    expect(results(a2, "after merge(state())"), want, "merging the second half's pickled state() dict is not the same as "
                                                     "one instance seeing all the data")

    # state()/load_state() round trip
    state = _call(where, "state()", full.state)
    try:
        blob = pickle.dumps(state)
    except Exception as exc:
        raise AssertionError(f"{where}: state() cannot be pickled ({type(exc).__name__}: {exc}); use tensors, numbers, "
                             "lists and dicts") from exc
    loaded = build()
    _call(where, "load_state(state())", loaded.load_state, pickle.loads(blob))
    if not _same(loaded.state(), state):
        raise AssertionError(f"{where}: load_state(state()) then state() gives {loaded.state()!r} instead of {state!r}")
    expect(results(loaded, "after load_state()"), want, "load_state(state()) does not give back the result")
    kept = pickle.loads(blob)
    loaded_src = pickle.loads(blob)
    again = build()
    _call(where, "load_state(state())", again.load_state, loaded_src)
    update(again, first, "the first half after load_state()")
    if not _same(loaded_src, kept):
        raise AssertionError(f"{where}: updating after load_state(state) changed the state dict it was given "
                             "(copy what load_state takes: a checkpoint must stay as saved)")
    return want


# -- evaluators --------------------------------------------------------------------------------


def _images_source(images, labels):
    """An in-memory data source of ``images`` and ``labels`` (what :func:`check_evaluator` evaluates on).

    The class is defined here, not at module level: the kit's module imports nothing of freqprobe at pytest's start-up.
    """
    from freqprobe import Batch, DataSource

    class ImagesSource(DataSource):
        name = "freqprobe-testing-images"

        def __init__(self) -> None:
            super().__init__(None)
            self.images, self.labels = images, labels
            self.num_classes = int(labels.max()) + 1 if len(labels) else 1

        def __len__(self) -> int:
            return len(self.images)

        def load(self, indices):
            import torch

            idx = torch.as_tensor(indices, dtype=torch.int64)
            return Batch(self.images[idx], self.labels[idx], idx)

    return ImagesSource()


def check_evaluator(make, *, adapter=None, images=None, labels=None, sources=None, params=(4.0, 8.0), batch_size: int = 2,
                    pm=None, tol: float = 0.0):
    """Check a :class:`freqprobe.Evaluator` through the real evaluation loop: resume and merge are properties of the contract.

    ``make(ctx, sources)`` returns a fresh evaluator for the run context ``ctx`` and its variant
    sources (default: the original images and ``fft-radial`` parts at ``params`` of
    :func:`make_images`, on :func:`make_classifier`, labelled with its own predictions, in
    batches of ``batch_size``). Asserts, comparing ``rows()`` (values to ``tol``; 0: bit for bit)
    and ``extras()`` with one pass over all the data:

    * the batches split between two shards (every other batch, as torchrun does), each shard's
      state merged into the other (the instance, and its pickled ``state_dict()``), give the same;
    * ``state_dict()`` pickles, and ``load_state_dict()`` into a fresh instance gives the same;
    * ``reset()`` restores a fresh instance's ``rows()``.

    Returns the one-pass ``rows()``.
    """
    import pickle

    import freqprobe
    from freqprobe.engine import run_loop

    where = "check_evaluator"
    pm = pm if pm is not None else freqprobe.get_plugin_manager(autoload=False)
    adapter = adapter if adapter is not None else make_classifier()
    images = images if images is not None else make_images(n=6)
    labels = labels if labels is not None else adapter.predict(images).argmax(-1)
    dec = freqprobe.get_decomposer("fft-radial", pm)
    rescale = freqprobe.get_class("rescale", "none", pm)()

    def ctx(shard=None):
        kw = {"shard": shard} if shard else {}
        return freqprobe.RunContext.create(adapter, _images_source(images, labels), dec, params, rescale, device=images.device, pm=pm,
                                           batch_size=batch_size, **kw)

    def evaluate(c):
        src = sources(c) if sources is not None else [freqprobe.DecomposerSource(dec, params)]
        ev = _call(where, "make(ctx, sources)", make, c, src)
        state = _call(where, "the evaluation loop", run_loop, c, src, evaluators=[ev], samples=False)
        return state.evaluators[-1]

    def report(ev, what):
        return _call(where, f"rows() {what}", ev.rows), _call(where, f"extras() {what}", ev.extras)

    def expect(got, want, what):
        rows, extras = got
        if len(rows) != len(want[0]) or not all(_rows_equal(a, b, tol) for a, b in zip(rows, want[0])):
            raise AssertionError(f"{where}: {what}: rows() {rows!r} instead of {want[0]!r}")
        if not _same(extras, want[1]):
            raise AssertionError(f"{where}: {what}: extras() differ")

    whole = evaluate(ctx())
    want = report(whole, "after one pass")
    a, b = evaluate(ctx((0, 2))), evaluate(ctx((1, 2)))
    shipped = _call(where, "pickling state_dict()", lambda: pickle.loads(pickle.dumps(b.state_dict())))
    _call(where, "merge(state_dict)", a.merge, shipped)
    expect(report(a, "after merge"), want, "two shards merged are not one pass over all the data")
    fresh = _call(where, "make(ctx, sources)", make, ctx(), [freqprobe.DecomposerSource(dec, params)] if sources is None
                  else sources(ctx()))
    _call(where, "reset()", fresh.reset)
    empty = report(fresh, "of a fresh instance")
    _call(where, "load_state_dict(state_dict())", fresh.load_state_dict, pickle.loads(pickle.dumps(whole.state_dict())))
    expect(report(fresh, "after load_state_dict"), want, "load_state_dict(state_dict()) does not give the result back")
    _call(where, "reset()", fresh.reset)
    expect(report(fresh, "after reset()"), empty, "reset() did not restore a fresh instance")
    return want[0]


def _rows_equal(a, b, tol: float) -> bool:
    if a.keys() != b.keys():
        return False
    return all(_close(a[k], b[k], tol) if isinstance(a[k], float) and isinstance(b[k], float) else _same(a[k], b[k]) for k in a)
