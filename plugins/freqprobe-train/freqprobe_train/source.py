"""The ``paper:`` model source: the paper's architectures (:mod:`freqprobe_train.archs`) by name.

The architectures are torch modules; they are imported when a model is built, so registering the source
(``freqprobe --help`` lists it) loads no torch.
"""

from __future__ import annotations

from typing import Any, Mapping

from freqprobe import BuiltModel, ModelSource, UnknownNameError, UserFacingError

ACCEPTED_ARGS = ("bn", "dropout", "image_size", "in_chans", "num_classes")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _as_bool(spec: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise UserFacingError(f"{spec}: bn={value!r} must be true or false (--model-arg bn=true)")


def _as_int(spec: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserFacingError(f"{spec}: {key}={value!r} must be a positive whole number")
    try:
        f = float(value)
    except ValueError:
        raise UserFacingError(f"{spec}: {key}={value!r} must be a positive whole number") from None
    if f != f or f < 1 or f != int(f):
        raise UserFacingError(f"{spec}: {key}={value!r} must be a positive whole number")
    return int(f)


def _as_prob(spec: str, value: Any) -> float:
    try:
        p = float(value) if not isinstance(value, bool) else float("nan")
    except (TypeError, ValueError):
        p = float("nan")
    if not 0.0 <= p < 1.0:
        raise UserFacingError(f"{spec}: dropout={value!r} must be a probability in [0, 1), e.g. --model-arg dropout=0.5")
    return p


def _canonical(target: str, names) -> str:
    """``VGG-11`` / ``ResNet_18`` -> ``vgg11`` / ``resnet18`` (when in ``names``); anything else as given."""
    key = target.strip().lower().replace("-", "").replace("_", "")
    return key if key in names else target


class PaperModelSource(ModelSource):
    """The paper's architectures sized for 28×28/32×32 (paper:lenet, paper:vgg11 ...; --model-arg bn=true dropout=0.5)

    ``--model-arg`` keys: ``bn`` (BatchNorm after every conv, default false), ``dropout`` (p before
    the FC layers, default 0), ``in_chans`` (default 3) and ``image_size`` (default 32; ``freqprobe
    train`` passes both from the data: 1/28 for MNIST), ``num_classes`` (default: the data's class
    count, else 10). Fresh weights only (Xavier initialised, deterministic under
    ``torch.manual_seed``); train them with ``freqprobe train`` or load ``--checkpoint``.
    """

    name = "paper"

    def build(self, target, *, pretrained=False, num_classes=None, model_args: Mapping[str, Any] = {}):
        from .archs import ARCHITECTURES, xavier_init

        arch = _canonical(target, ARCHITECTURES)
        if arch not in ARCHITECTURES:
            raise UnknownNameError("paper architecture", target, list(ARCHITECTURES))
        spec = f"paper:{arch}"
        if pretrained:
            raise UserFacingError(
                f"{spec} has no pretrained weights; train it with `freqprobe train --model {spec}`, "
                "or pass --checkpoint PATH with weights you trained"
            )
        args = dict(model_args or {})
        bad = sorted(k for k in args if k not in ACCEPTED_ARGS)
        if bad:
            raise UserFacingError(
                f"{spec} does not take --model-arg {', '.join(bad)}; it accepts: {', '.join(ACCEPTED_ARGS)}"
            )
        k = args.get("num_classes", num_classes if num_classes is not None else 10)
        kwargs = {
            "num_classes": _as_int(spec, "num_classes", k),
            "in_chans": _as_int(spec, "in_chans", args.get("in_chans", 3)),
            "image_size": _as_int(spec, "image_size", args.get("image_size", 32)),
            "bn": _as_bool(spec, args.get("bn", False)),
            "dropout": _as_prob(spec, args.get("dropout", 0.0)),
        }
        try:
            module = ARCHITECTURES[arch](**kwargs)
        except ValueError as exc:
            raise UserFacingError(str(exc).replace(f"{arch}:", f"{spec}:", 1)) from None
        xavier_init(module)
        return BuiltModel(
            module,
            mean=None,
            std=None,
            input_size=None,
            has_weights=False,
            info={"paper_arch": arch, "bn": kwargs["bn"], "dropout": kwargs["dropout"],
                  "in_chans": kwargs["in_chans"], "image_size": kwargs["image_size"]},
        )
