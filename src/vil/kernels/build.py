"""Building and loading the fused CPU kernels: the C sources here compiled once per machine into one library,
cached, loaded with ctypes.

The C sources are compiled with the machine's own compiler and ``-march=native`` (about 1.5 s) into a
cache directory keyed by the source, the flags, the compiler and the CPU; a build writes a temporary file and
renames it, so an interrupted build or two processes building at once never leave a half-written library.

Threads come from OpenMP (``-fopenmp``), and from the OpenMP runtime PyTorch itself uses: the library asks for
``libgomp.so.1`` by name, and the dynamic loader hands it the copy already in the process, the one bundled with the
torch wheel (loaded with torch, which is always imported before the kernels). So the kernels and PyTorch's own
operators share one pool of threads, not two pools that would fight over the cores, and a kernel called inside
an OpenMP region (PyTorch's thread pool) runs on its calling thread, as PyTorch's nested operators do. Where the
compiler has no OpenMP, the kernels are built without it and run on one thread (warned once).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

HERE = Path(__file__).parent
SOURCES = (HERE / "block.c", HERE / "cell.c")  # with their shared headers
HEADERS = (HERE / "vector.h", HERE / "headwise.h", HERE / "sums.h")
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC")
SERIAL = ("-fopenmp", "-fopenmp-simd")  # where the compiler lacks OpenMP: the same kernels on one thread
SWITCH = "VIL_KERNELS"  # "0" turns the kernels off
CACHE = "VIL_CACHE_DIR"  # where the compiled library is kept (default: ~/.cache/vil)

_library: ctypes.CDLL | None = None
_loaded = False
_disabled = False
_POINTER, _INT, _FLOAT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
# every kernel takes the number of threads to use as its last argument
_SIGNATURES = {
    "vil_headwise_qkv": [_POINTER] * 15 + [_INT] * 6,
    "vil_mlstm_parallel_headwise": [_POINTER] * 13 + [_INT] * 4 + [_FLOAT, _FLOAT, _INT],
    "vil_mlstm_parallel_backward_headwise": [_POINTER] * 24 + [_INT] * 4 + [_FLOAT, _FLOAT, _INT],
    "vil_gated_branch_output": [_POINTER] * 7 + [_INT] * 4 + [_FLOAT, _INT],
    "vil_gated_branch_output_backward": [_POINTER] * 15 + [_INT] * 5 + [_FLOAT, _INT],
    "vil_conv2d_silu": [_POINTER] * 4 + [_INT] * 6,
    "vil_conv2d_silu_backward": [_POINTER] * 9 + [_INT] * 7,
    "vil_headwise_qkv_backward": [_POINTER] * 15 + [_INT] * 7,
    "vil_mlstm_parallel": [_POINTER] * 8 + [_INT] * 4 + [_FLOAT] * 2 + [_INT],
    "vil_mlstm_parallel_backward": [_POINTER] * 15 + [_INT] * 4 + [_FLOAT] * 2 + [_INT],
    "vil_mlstm_chunkwise": [_POINTER] * 17 + [_INT] * 5 + [_FLOAT] * 2 + [_INT],
    "vil_mlstm_chunkwise_backward": [_POINTER] * 17 + [_INT] * 5 + [_FLOAT, _INT],
    "vil_mlstm_state_backward": [_POINTER] * 18 + [_INT] * 5,
}
# these return 0, or -1 when their buffers could not be allocated
_RETURNS_STATUS = (
    "vil_mlstm_parallel", "vil_mlstm_parallel_headwise", "vil_mlstm_parallel_backward",
    "vil_mlstm_parallel_backward_headwise", "vil_mlstm_chunkwise",
    "vil_mlstm_chunkwise_backward", "vil_mlstm_state_backward",
)  # fmt: skip


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None where they are switched off or cannot be built (warned once)."""
    global _library, _loaded
    if not _loaded:
        _loaded = True
        if os.environ.get(SWITCH, "1") == "0":
            logger.info("fused CPU kernels switched off by %s=0", SWITCH)
        else:
            _library = _load()
    return _library


@contextlib.contextmanager
def disabled():
    """Within this context every caller computes the PyTorch expression (e.g. to count its work or compare)."""
    global _disabled
    previous, _disabled = _disabled, True
    try:
        yield
    finally:
        _disabled = previous


def reset() -> None:
    """Forget the loaded library, so that the next call looks at ``VIL_KERNELS`` and the cache again."""
    global _library, _loaded
    _library, _loaded = None, False


def is_disabled() -> bool:
    """Whether a :func:`disabled` context is active."""
    return _disabled


def _load() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        logger.warning("no C compiler found (set CC): the ViL block runs without its fused CPU kernels")
        return None
    try:
        target = _built(compiler, FLAGS)
    except (OSError, subprocess.SubprocessError) as error:
        try:
            target = _built(compiler, tuple(SERIAL[1] if f == SERIAL[0] else f for f in FLAGS))
        except (OSError, subprocess.SubprocessError):
            logger.warning("building the fused CPU kernels failed, running without them: %s", error)
            return None
        logger.warning("the fused CPU kernels were built without OpenMP (%s): they run on one thread", error)
    lib = ctypes.CDLL(str(target))
    for name, arguments in _SIGNATURES.items():
        getattr(lib, name).argtypes = arguments
        getattr(lib, name).restype = ctypes.c_int if name in _RETURNS_STATUS else None
    return lib


def _built(compiler: str, flags: tuple[str, ...]) -> Path:
    """The library built from the sources with these flags: from the cache, or compiled into it."""
    sources = [f.read_bytes() for f in SOURCES + HEADERS]
    key = hashlib.sha256(
        b"\0".join([*sources, " ".join(flags).encode(), compiler.encode(), _cpu_identity().encode()])
    ).hexdigest()[:16]
    target = _cache_dir() / f"vil_block_{key}.so"
    if not target.exists():
        _compile(compiler, flags, target)
    return target


def _compile(compiler: str, flags: tuple[str, ...], target: Path) -> None:
    """Compile into a temporary file next to ``target`` and rename it: a build interrupted or run by two processes
    at once never leaves a half-written library behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        command = [compiler, *flags, "-o", partial, *map(str, SOURCES), "-lm"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise subprocess.SubprocessError(f"{' '.join(command)} exited with {result.returncode}:\n{result.stderr}")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _cache_dir() -> Path:
    if os.environ.get(CACHE):
        return Path(os.environ[CACHE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vil"


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and its feature flags (Linux), else the platform's words."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))
