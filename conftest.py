"""Shared test setup (the core's tests and the first-party plugins' tests): offline, CPU only, temporary caches, no third-party plugin autoload."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_tmp = Path(tempfile.mkdtemp(prefix="freqprobe-tests-"))
for var, sub in (("TORCH_HOME", "torch"), ("HF_HOME", "hf"), ("MPLCONFIGDIR", "mpl"), ("FREQPROBE_DATA_ROOT", "data")):
    os.environ.setdefault(var, str(_tmp / sub))
os.environ["HF_HUB_OFFLINE"] = "1"
# The suite runs on the CPU (``--device auto`` would otherwise pick a GPU). On a GPU machine,
# FREQPROBE_TEST_CUDA=1 keeps the GPU visible so the tests marked ``cuda`` run.
TEST_CUDA = os.environ.get("FREQPROBE_TEST_CUDA", "").strip().lower() in {"1", "true", "yes", "on"}
if not TEST_CUDA:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["FREQPROBE_DISABLE_PLUGIN_AUTOLOAD"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Property tests are derandomised everywhere (each test also says so itself); under CI=true the
# profile makes sure a test that forgets cannot draw new examples on a new machine.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI", "").lower() in {"1", "true", "yes"} else "dev")


def pytest_collection_modifyitems(config, items):
    if TEST_CUDA and torch.cuda.is_available():
        return
    why = "needs a CUDA GPU (run with FREQPROBE_TEST_CUDA=1 on a GPU machine)" if not TEST_CUDA else "FREQPROBE_TEST_CUDA=1 but torch sees no CUDA GPU"
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)

REPO = Path(__file__).resolve().parent
FIXTURES = REPO / "tests" / "fixtures"
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(FIXTURES))


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` beside the checkout; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (../shared/data beside the checkout)")
    return SHARED_DATA


@pytest.fixture
def pm():
    """A fresh plugin manager with only the built-ins."""
    from freqprobe import get_plugin_manager

    return get_plugin_manager(autoload=False)


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    """A real .npz data set on disk: 24 random uint8 3×16×16 images, 4 classes."""
    import numpy as np

    rng = np.random.default_rng(0)
    p = tmp_path / "tiny.npz"
    np.savez(p, x=rng.integers(0, 256, size=(24, 16, 16, 3), dtype=np.uint8), y=np.arange(24) % 4)
    return p


@pytest.fixture
def tiny_model_file(tmp_path) -> Path:
    """A user model file (``file.py:callable`` source) with a small CNN."""
    p = tmp_path / "tinynet.py"
    p.write_text(
        "import torch\n"
        "from torch import nn\n\n"
        "def tinynet(num_classes=4, width=8, in_chans=3):\n"
        "    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))\n"
    )
    return p


@pytest.fixture
def cli(capsys):
    """The console entry, in-process: ``cli("run", ...) -> (exit code, stdout, stderr)``.

    :func:`freqprobe.cli.main` is what the console script runs (``entry() = sys.exit(main())``)
    and the only place that maps freqprobe errors to exit code 2.
    """
    from freqprobe.cli import main

    def run(*args):
        capsys.readouterr()
        rc = main([str(a) for a in args])
        got = capsys.readouterr()
        return rc, got.out, got.err

    return run


@pytest.fixture
def first_party_pm(monkeypatch):
    """``first_party_pm("attacks", "smoothing")``: the default plugin manager the CLI and ``freqprobe.run`` use,
    with those first-party plugins registered (autoload is off in tests)."""
    import importlib

    import freqprobe.plugins
    from freqprobe import get_plugin_manager

    def make(*names: str):
        pm = get_plugin_manager(autoload=False)
        for name in names:
            pm.register(importlib.import_module(f"freqprobe_{name}.hooks"), name)
        monkeypatch.setattr(freqprobe.plugins, "_default", pm)
        return pm

    return make


@pytest.fixture
def coco_pm(first_party_pm):
    """The default plugin manager with the COCO plugin registered."""
    return first_party_pm("coco")


class FreqprobeProcesses:
    """``python -m freqprobe ARGS`` as one process (``one``) or under ``torchrun --nproc_per_node 2`` (``two``: gloo on
    the CPU), with the entry-point plugins loaded as installed and one thread per process."""

    @staticmethod
    def env() -> dict:
        env = dict(os.environ)
        env.pop("FREQPROBE_DISABLE_PLUGIN_AUTOLOAD", None)
        env["OMP_NUM_THREADS"] = "1"
        return env

    @staticmethod
    def _port() -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def one(self, args: list, cwd: Path):
        import subprocess

        return subprocess.run([sys.executable, "-m", "freqprobe", *map(str, args)], env=self.env(), cwd=cwd,
                              capture_output=True, text=True, timeout=300)

    def two(self, args: list, cwd: Path):
        import subprocess

        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(self._port()), "-m", "freqprobe", *map(str, args)]
        return subprocess.run(cmd, env=self.env(), cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def freqprobe_processes() -> FreqprobeProcesses:
    """Runs of the freqprobe command in one process or two (torchrun); skips when this torch has no torchrun."""
    import importlib.util

    import torch.distributed

    if not torch.distributed.is_available() or importlib.util.find_spec("torch.distributed.run") is None:
        pytest.skip("torch.distributed / torchrun is not available in this torch build")
    return FreqprobeProcesses()


@pytest.fixture
def tiny_weights(tiny_model_file, tmp_path) -> Path:
    """A real checkpoint of :func:`tiny_model_file`'s network (``--checkpoint``: a run that is not fitted first)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"tinynet_{tmp_path.name}", tiny_model_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    w = tmp_path / "w.pt"
    torch.save(mod.tinynet().state_dict(), w)
    return w


VENDORED_DETECTRON2 = REPO.parent / "shared" / "vendor" / "detectron2"


@pytest.fixture
def detectron2_ready() -> None:
    """Skips, saying which, unless detectron2 imports with this torch: .ci/run installs the vendored wheel from
    ../shared/vendor/detectron2 (built against one torch version) before the README's test command."""
    pytest.importorskip("freqprobe_coco")
    from freqprobe_coco.detectron2_source import detectron2_problem

    problem = detectron2_problem()
    if problem is None:
        return
    if "not installed" in problem:
        where = ("absent here, so .ci/run installs nothing" if not VENDORED_DETECTRON2.is_dir() else
                 "present: install its wheel with pip install --no-deps, as .ci/run does")
        pytest.skip(f"detectron2 is not installed; the vendored build ../shared/vendor/detectron2 is {where}")
    pytest.skip(problem)


class _Payload:
    """Unpickling it opens ``marker`` for writing (so creates the file): the stand-in for a malicious pickle's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def pickle_payload(tmp_path) -> _Payload:
    """Put it in a pickle that must be refused unread: ``pickle_payload.marker`` exists only if it was unpickled."""
    return _Payload(tmp_path / "pwned")
