"""Shared helpers for the humanlm reference scripts in scripts/reference/.

Not a script of its own: the generators import it (they run as `python scripts/reference/<name>.py`
from the repository root, so this folder is on sys.path).
"""

import hashlib
import json
import os
import platform
import sys
from importlib import metadata

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SMOLLM_DIR = os.path.join(REPO_ROOT, "checkpoints", "smollm2-135m-instruct")
SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures")


def rel(path):
    """Path relative to the repository root, with forward slashes."""
    return os.path.relpath(os.path.abspath(path), REPO_ROOT).replace(os.sep, "/")


def pkg_version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def generator(script_file, packages, **extra):
    """The "generator" object every fixture carries: which script made it, with which versions."""
    info = {
        "script": rel(script_file),
        "command": f"{sys.executable.replace(os.path.expanduser('~'), '~', 1)} {rel(script_file)}",
        "python": platform.python_version(),
        "platform": f"{platform.system()}-{platform.machine()}",
    }
    for p in packages:
        info[p.replace("-", "_")] = pkg_version(p)
    info.update(extra)
    return info


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def f32(x):
    """A float32 value as the shortest decimal that reads back to the same float32.

    json writes the returned Python float with repr, so a float32 costs ~10 characters instead of
    the ~18 that float(np.float32(x)) would take, and parsing it (as f32, or as f64 then cast to
    f32) gives back the exact float32 the reference computed.
    """
    import numpy as np

    return float(str(np.float32(x)))


def f32_list(values):
    import numpy as np

    arr = np.asarray(values, dtype=np.float32).reshape(-1)
    out = [float(str(v)) for v in arr]
    back = np.asarray(out, dtype=np.float64).astype(np.float32)
    assert np.array_equal(back, arr), "shortest float32 text did not read back exactly"
    return out


def write_json(path, obj, indent=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = json.dumps(obj, ensure_ascii=False, indent=indent, allow_nan=False)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.write("\n")
    size = os.path.getsize(path)
    print(f"wrote {rel(path)} ({size / 1024:.1f} KiB)", file=sys.stderr)
    return size
