"""Declared options and the immutable run configuration.

Every option of ``freqprobe run`` — the core's and the plugins' — is one :class:`Option`
declaration. The command line's click options, the Python API's keywords (``freqprobe.run(model,
**options)``) and the :class:`RunConfig` a run reads are all generated from these declarations, so
adding an option touches its declaration and its consumer, nothing in between.

Plugins declare theirs through the ``add_options(parser)`` hook (the shape of pytest's
``pytest_addoption``)::

    @hookimpl
    def add_options(parser):
        parser.add_option("--scale", type=float, probe="my-probe", help="Scale the images by this ({probes}).")

An option's value reaches its consumer through the run's configuration (``ctx.config["scale"]``)
or, with ``key=``, as an option of the probe or decomposer it belongs to (``--rule`` sets the
``rule`` option of ``fft-radial``). The value lands in the run's manifest. An option that belongs
to a probe or decomposer (``probe=``/``decomposer=``) is refused in one line with any other.

``{models}``, ``{datasets}``, ``{decomposers}``, ``{probes}``, ``{metrics}``, ``{attacks}``,
``{transforms}``, ``{rescale}`` in a help text are filled from the registry when the help is shown,
so what a plugin registers appears there too.
"""

from __future__ import annotations

import dataclasses
import math
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from .errors import UserFacingError

#: commands whose options the ``add_options`` hook may extend
OPTION_COMMANDS = ("run", "decompose")
#: who declared the core's own options (``freqprobe plugins`` and messages name it)
CORE = "freqprobe"


@dataclasses.dataclass(frozen=True)
class Option:
    """One declared option: its command-line spelling, its Python name (``dest``), and what it belongs to."""

    dest: str
    flags: tuple[str, ...]
    help: str = ""
    default: Any = None
    #: ``int``, ``float``, ``str``, ``bool``; ``"path"``, ``"dir"``, ``"file"``; or a tuple of choices
    type: Any = None
    multiple: bool = False
    #: a switch without a value (``--pretrained``); with ``secondary`` an on/off pair (``--channels-last/--no-...``)
    flag: bool = False
    secondary: str | None = None
    metavar: str | None = None
    show_default: bool = False
    required: bool = False
    commands: tuple[str, ...] = ("run",)
    #: the option applies only to these probes / decomposers / data sets (refused with any other)
    probe: tuple[str, ...] = ()
    decomposer: tuple[str, ...] = ()
    dataset: tuple[str, ...] = ()
    #: route the value into that probe's (decomposer's, data source's) options under this key
    key: str | None = None
    #: the command line's value -> the configuration's (``--non-strict`` -> ``strict=False``)
    from_cli: Callable[[Any], Any] | None = None
    #: ``check(value, pm)``: refuse a bad value (raise UserFacingError) before anything is loaded; called when given
    check: Callable[[Any, Any], None] | None = None
    #: the plugin that declared it (filled in when the options are collected)
    plugin: str = CORE

    @property
    def flag_name(self) -> str:
        return self.flags[0]

    def given(self, value: Any) -> bool:
        """Whether ``value`` was asked for (differs from the default; empty repeatable options are not)."""
        if self.multiple and not value:
            return False
        return value is not None and value != self.default

    def owners(self, kind: str) -> tuple[str, ...]:
        """The probes / decomposers / data sets (``kind``) the option belongs to (empty: any)."""
        return {"probe": self.probe, "decomposer": self.decomposer, "dataset": self.dataset}[kind]

    def misfit(self, **chosen: str | None) -> str | None:
        """The kind (``probe``...) whose chosen name the option does not belong to, or None when it applies."""
        return next((k for k, name in chosen.items() if self.owners(k) and name not in self.owners(k)), None)

    def owner(self) -> str:
        """``probe 'lfc-hfc'`` / ``decomposer 'fft-radial'`` / ``data 'coco'``: what the option belongs to, for messages."""
        for kind, word in (("probe", "probe"), ("decomposer", "decomposer"), ("dataset", "data")):
            if self.owners(kind):
                return f"{word} {' or '.join(repr(p) for p in self.owners(kind))}"
        return "every run"


class OptionParser:
    """What the ``add_options(parser)`` hook receives: ``parser.add_option(*flags, dest=..., ...)``."""

    def __init__(self, plugin: str = CORE) -> None:
        self.plugin = plugin
        self.options: list[Option] = []

    def add_option(self, *flags: str, dest: str | None = None, help: str = "", default: Any = None, type: Any = None,
                   multiple: bool = False, flag: bool = False, secondary: str | None = None, metavar: str | None = None,
                   show_default: bool = False, required: bool = False, commands: Sequence[str] = ("run",),
                   probe: str | Sequence[str] = (), decomposer: str | Sequence[str] = (), dataset: str | Sequence[str] = (),
                   key: str | None = None,
                   from_cli: Callable[[Any], Any] | None = None, check: Callable[[Any, Any], None] | None = None) -> Option:
        """Declare an option (see :class:`Option`); ``dest`` defaults to the first flag without dashes."""
        if not flags or not all(isinstance(f, str) and f.startswith("--") and len(f) > 2 for f in flags):
            raise ValueError(f"option flags must look like --name, got {flags!r}")
        dest = dest or flags[0][2:].replace("-", "_")
        if not dest.isidentifier():
            raise ValueError(f"option dest {dest!r} is not a Python identifier")
        if flag and not secondary and default is None and from_cli is None:
            default = False  # a switch left off is not given
        unknown = [c for c in commands if c not in OPTION_COMMANDS]
        if unknown:
            raise ValueError(f"add_options can extend the commands {', '.join(OPTION_COMMANDS)}, not {', '.join(unknown)}")
        opt = Option(dest=dest, flags=tuple(flags), help=help, default=default if not multiple else tuple(default or ()),
                     type=type, multiple=multiple, flag=flag, secondary=secondary, metavar=metavar,
                     show_default=show_default, required=required, commands=tuple(commands),
                     probe=(probe,) if isinstance(probe, str) else tuple(probe),
                     decomposer=(decomposer,) if isinstance(decomposer, str) else tuple(decomposer),
                     dataset=(dataset,) if isinstance(dataset, str) else tuple(dataset),
                     key=key, from_cli=from_cli, check=check, plugin=self.plugin)
        self.options.append(opt)
        return opt


class OptionSet(Mapping[str, Option]):
    """The options of one command, by ``dest``, in declaration order (core first, then plugins)."""

    def __init__(self, options: Iterable[Option] = ()) -> None:
        self._by_dest: dict[str, Option] = {}
        for o in options:
            self._by_dest[o.dest] = o

    def __getitem__(self, dest: str) -> Option:
        return self._by_dest[dest]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_dest)

    def __len__(self) -> int:
        return len(self._by_dest)

    def for_command(self, command: str) -> "OptionSet":
        return OptionSet(o for o in self._by_dest.values() if command in o.commands)

    def defaults(self) -> dict[str, Any]:
        return {d: o.default for d, o in self._by_dest.items()}

    def by_flag(self, flag: str) -> Option | None:
        return next((o for o in self._by_dest.values() if flag in o.flags or flag == o.secondary), None)


class RunConfig(Mapping[str, Any]):
    """Every option of a run, as the user gave it (defaults filled in); immutable.

    Read a value as ``config["batch_size"]``, ``config.get("attacks")`` or ``config.batch_size``;
    :meth:`replace` makes a changed copy. :attr:`options` are the declarations the values came from.
    """

    __slots__ = ("_values", "_options")

    def __init__(self, values: Mapping[str, Any] | None = None, options: OptionSet | None = None) -> None:
        object.__setattr__(self, "_values", MappingProxyType(dict(values or {})))
        object.__setattr__(self, "_options", options if options is not None else OptionSet())

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"the run configuration has no option {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a RunConfig is immutable; use config.replace(...)")

    def __repr__(self) -> str:
        return f"RunConfig({dict(self._values)!r})"

    def __reduce__(self):
        return (RunConfig, (dict(self._values), self._options))

    @property
    def options(self) -> OptionSet:
        return self._options

    def replace(self, **changes: Any) -> "RunConfig":
        return RunConfig({**self._values, **changes}, self._options)

    def routed(self, kind: str, name: str | None) -> dict[str, Any]:
        """The values of options routed (``key=``) into the component ``name`` (``kind``: ``probe``, ``decomposer``, ``dataset``)."""
        out = {}
        for dest, o in self._options.items():
            if o.key and name in o.owners(kind) and dest in self._values and o.given(self._values[dest]):
                out[o.key] = self._values[dest]
        return out

    def check_applicable(self, *, probe: str | None = None, decomposer: str | None = None, dataset: str | None = None) -> None:
        """Refuse, in one line, an option given for a probe, decomposer or data set other than the run's."""
        chosen = {"probe": probe, "decomposer": decomposer, "dataset": dataset}
        words = {"probe": "probe", "decomposer": "decomposer", "dataset": "data"}
        for dest, o in self._options.items():
            kind = o.misfit(**chosen) if dest in self._values and o.given(self._values[dest]) else None
            if kind is not None:
                by = "" if o.plugin == CORE else f" (from plugin {o.plugin!r})"
                raise UserFacingError(f"{o.flag_name} is an option of {o.owner()}{by}; it has no effect with "
                                      f"{words[kind]} {chosen[kind]!r}")

    def check_values(self, pm: Any) -> None:
        """Each given option's ``check(value, pm)`` (a plugin refusing a bad value before anything is loaded)."""
        for dest, o in self._options.items():
            if o.check is not None and dest in self._values and o.given(self._values[dest]):
                o.check(self._values[dest], pm)

    def plugin_values(self) -> dict[str, dict[str, Any]]:
        """``{plugin: {dest: value}}`` of the plugin-declared options that were given (the manifest's record)."""
        out: dict[str, dict[str, Any]] = {}
        for dest, o in self._options.items():
            if o.plugin != CORE and dest in self._values and o.given(self._values[dest]):
                v = self._values[dest]
                out.setdefault(o.plugin, {})[dest] = list(v) if isinstance(v, tuple) else v
        return out


# ----------------------------------------------------------------------------- value parsers (shared by options)
def parse_kv(pairs: Iterable[str], what: str) -> dict[str, Any]:
    """``["depth=20", "pretrained=False"]`` -> ``{"depth": 20, "pretrained": False}`` (Python literals, else strings)."""
    import ast

    out: dict[str, Any] = {}
    for item in pairs or ():
        key, sep, val = item.partition("=")
        key = key.strip()
        parts = key.split(".")  # dotted keys (detectron2's INPUT.MIN_SIZE_TEST, a LazyConfig's augmentations.0.max_size)
        if not sep or not parts[0].isidentifier() or not all(p.isidentifier() or p.isdigit() for p in parts[1:]):
            raise UserFacingError(f"malformed {what} {item!r}: use KEY=VALUE")
        low = val.strip().lower()
        if low in ("true", "false", "none"):  # random_start=false: a boolean, as on every command line
            out[key] = {"true": True, "false": False, "none": None}[low]
            continue
        try:
            out[key] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            out[key] = val
    return out


def parse_component(spec: str, what: str) -> tuple[str, dict[str, Any]]:
    """``"pgd:steps=10,random_start=false"`` -> ``("pgd", {"steps": 10, "random_start": False})`` (``what``: for messages)."""
    name, _, args = str(spec).partition(":")
    name = name.strip()
    if not name:
        raise UserFacingError(f"malformed {what} {spec!r}: use NAME or NAME:KEY=VALUE,...")
    return name, parse_kv([a for a in args.split(",") if a.strip()], f"option of {what} {name}")


def parse_numbers(text: str | Sequence[float] | None, what: str, *, example: str = "0.03,0.06", unit: str = "value") -> list[float]:
    """``"0.03,8/255"`` -> ``[0.03, 0.0313...]``: positive, finite, no duplicates (fractions ``a/b`` accepted)."""
    if text is None:
        return []
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    out: list[float] = []
    for item in items:
        try:
            if isinstance(item, str) and "/" in item:
                num, _, den = item.partition("/")
                v = float(num) / float(den)
            else:
                v = float(item)
        except (TypeError, ValueError, ZeroDivisionError):
            raise UserFacingError(f"{what} must be comma-separated numbers like {example} or 8/255, got {text!r}") from None
        if not (math.isfinite(v) and v > 0):
            raise UserFacingError(f"{what} values must be positive and finite, got {item!r}")
        if v in out:
            raise UserFacingError(f"{what} {item} is given twice; pass each {unit} once")
        out.append(v)
    if not out:
        raise UserFacingError(f"{what} must be comma-separated numbers like {example}, got {text!r}")
    return out





#: the help of ``--workers`` (``run``, ``decompose``, and the train plugin's ``train``)
WORKERS_HELP = ("Worker processes that read and decode the images (0: in this process; default auto: the cores "
                "available less one, at most 16; 0 below 4 cores or for data already decoded in memory). Results are "
                "identical for every N.")


def _workers_from_cli(v: Any) -> Any:
    from .loading import check_workers

    return None if v is None else check_workers(v)


def _check_workers(v: Any, pm: Any = None) -> None:
    from .loading import check_workers

    check_workers(v)


# ----------------------------------------------------------------------------- the core's own options of `run`
def _core_run_options() -> list[Option]:
    p = OptionParser(CORE)
    add = p.add_option
    add("--model", multiple=True, help="Model: {models}. Repeat it (or use --models) for a study: one run folder per model "
        "under --out.", from_cli=lambda v: (v[0] if len(v) == 1 else tuple(v)) if v else None)
    add("--models", type="file", metavar="FILE", help="A study's models, one per line: SPEC [CHECKPOINT] (# comments; a "
        "relative checkpoint path is relative to FILE): one run folder per model under --out.")
    add("--probe", default="lfc-hfc", show_default=True, help="Probe to run: {probes}.")
    add("--data", default="synth10", show_default=True, help="Data set: {datasets}.")
    add("--data-root", type="dir", help="Where torchvision data sets are (or get downloaded).")
    add("--image-size", type=int, help="Resize+centre-crop imagefolder images to this size.")
    add("--class-map", metavar="FILE|imagenet", help="imagefolder: class folder -> label index: FILE.json {folder: index}, a text file "
        "of folder names (line i = index i), or 'imagenet' (WordNet-id folders -> ImageNet-1k indices).")
    add("--limit", type=int, help="Use only the first N samples.")
    add("--decomposer", default="fft-radial", show_default=True, help="Decomposer: {decomposers}.")
    add("--radii", "--params", dest="params", help="Comma-separated radii (fft-radial) or ranks (svd); default: the decomposer's "
        "(4,8,12,16 / 1,2,4,8).")
    add("--decomposer-opt", dest="decomposer_options", multiple=True, metavar="KEY=VALUE",
        help="Extra decomposer option (repeatable).", from_cli=lambda v: parse_kv(v, "--decomposer-opt"))
    add("--rescale", default="none", show_default=True, help="How out-of-range component images are fed: {rescale}.")
    add("--metric", dest="metrics", multiple=True, help="Metric(s) to compute (default: the probe's): {metrics}.")
    add("--transform", dest="transforms", multiple=True, metavar="NAME[:K=V,...]",
        help="Model transform(s) applied before probing: {transforms}.")
    add("--checkpoint", type="file", help="Weights: state_dict (.pt/.pth/.th/.bin), .safetensors or TorchScript.")
    add("--pretrained", flag=True, default=False, help="Ask the model source (timm/torchvision) for pretrained weights (needs network or a cache).")
    add("--trust-checkpoint", flag=True, default=False, help="Allow checkpoints holding pickled Python objects (can run code).")
    add("--non-strict", dest="strict", flag=True, default=True, from_cli=lambda v: not v,
        help="Ignore missing/unexpected checkpoint keys (shape conflicts still fail).")
    add("--model-arg", dest="model_args", multiple=True, metavar="KEY=VALUE",
        help="Keyword argument for the model constructor (repeatable).", from_cli=lambda v: parse_kv(v, "--model-arg"))
    add("--mean", help="Override normalisation mean, e.g. 0.485,0.456,0.406.")
    add("--std", help="Override normalisation std, e.g. 0.229,0.224,0.225.")
    add("--fit-epochs", type=int, help="Epochs when fitting a model that has no weights (default: the data set's).")
    add("--fit-lr", type=float, help="Adam learning rate when fitting (default: the data set's).")
    add("--no-fit", dest="fit", flag=True, from_cli=lambda v: False if v else None,
        help="Probe a model without weights as is, instead of fitting it first.")
    add("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
    add("--batch-size", type=int, help="Images read per batch (each batch is evaluated in every variant); default: the data's "
        "(128 unless it says otherwise, e.g. 8 for detection images).")
    add("--workers", metavar="N|auto", help=WORKERS_HELP, from_cli=_workers_from_cli, check=_check_workers)
    add("--forward-batch", type=int, help="Images per forward pass; the variants of a batch are concatenated and cut into equal "
        "chunks of at most this (default: the batch size on CPU, at most 24 MiB of images; on CUDA all variants of a batch at once, "
        "up to 256 MiB of images).")
    add("--precision", type=("fp32", "tf32", "bf16", "fp16"), default="fp32", show_default=True,
        help="Model arithmetic: exact float32 (TF32 off), TF32 (CUDA), or bf16/fp16 autocast.")
    add("--channels-last", secondary="--no-channels-last", flag=True, default=None,
        help="Feed images in channels_last memory format (default: on).")
    add("--seed", type=int, default=0, show_default=True)
    add("--probe-opt", dest="probe_options", multiple=True, metavar="KEY=VALUE",
        help="Option of the probe (repeatable), e.g. gallery_size=4; an unknown key lists the probe's options.",
        from_cli=lambda v: parse_kv(v, "--probe-opt"))
    add("--out", type="path", help="Output folder (default: a new dated folder under runs/).")
    add("--resume", flag=True, default=False, help="Continue the interrupted run at --out from its last checkpoint (same options).")
    add("--allow-nonfinite", flag=True, default=False,
        help="Finish even when the model returns NaN/inf (counting such samples in nonfinite-outputs summary rows) or a "
             "metric's value is NaN/inf (published as it is); default: fail, naming the variant or the metric and its plugin.")
    return p.options


def _core_decompose_options() -> list[Option]:
    p = OptionParser(CORE)

    def add(*flags: str, **kw: Any) -> None:
        p.add_option(*flags, commands=("decompose",), **kw)

    add("--data", default="synth10", show_default=True, help="Data spec, as for `run`: {datasets}.")
    add("--data-root", type="dir")
    add("--image-size", type=int)
    add("--class-map", metavar="FILE|imagenet", help="imagefolder: class folder -> label index (as for `run`).")
    add("--split", type=("test", "train"), default="test", show_default=True)
    add("--limit", type=int, help="Only the first N samples.")
    add("--decomposer", default="fft-radial", show_default=True, help="Decomposer: {decomposers}.")
    add("--radii", "--params", dest="params", help="Comma-separated radii / ranks.")
    add("--decomposer-opt", dest="decomposer_options", multiple=True, metavar="KEY=VALUE",
        from_cli=lambda v: parse_kv(v, "--decomposer-opt"))
    add("--rescale", help="Rescale policy for the components ({rescale}; npz default: none; PNG default: minmax). "
        "For images of different sizes it applies to the PNGs only (folder png-NAME); the .npy arrays are never rescaled.")
    add("--device", default="auto", show_default=True)
    add("--batch-size", type=int, help="Images read per batch; default the data's own (e.g. 8 for detection images), else 256.")
    add("--workers", metavar="N|auto", help=WORKERS_HELP, from_cli=_workers_from_cli, check=_check_workers)
    add("--seed", type=int, default=0, show_default=True)
    add("--out", required=True, type="path", help="FILE.npz for arrays, or a folder for PNG images "
        "(images of different sizes, e.g. detection data: a folder only, with npy/, png-RESCALE/ and original/).")
    add("--resume", flag=True, default=False, help="Continue the interrupted export to --out from its last finished batch (same options).")
    return p.options


#: the options of ``freqprobe run`` that the core declares (plugins add theirs with the ``add_options`` hook)
CORE_RUN_OPTIONS: tuple[Option, ...] = tuple(_core_run_options())
#: the options of ``freqprobe decompose`` that the core declares
CORE_DECOMPOSE_OPTIONS: tuple[Option, ...] = tuple(_core_decompose_options())
#: keywords of :func:`freqprobe.run` that are no command-line options
API_ONLY = {"command": None}


__all__ = ["API_ONLY", "CORE", "CORE_DECOMPOSE_OPTIONS", "CORE_RUN_OPTIONS", "OPTION_COMMANDS", "Option", "OptionParser", "OptionSet", "RunConfig", "parse_component", "parse_kv",
           "parse_numbers"]
