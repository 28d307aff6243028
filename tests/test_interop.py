"""tfafm.interop stays optional; its own tests run in a pytest process with TF_USE_LEGACY_KERAS=1.

TensorFlow Recommenders needs Keras 2, which TensorFlow picks only when
``TF_USE_LEGACY_KERAS=1`` is set before it is imported, so ``tests/interop``
cannot run inside this (Keras 3) process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PYTHONPATH = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": PYTHONPATH})


def test_tfafm_imports_without_tfrs_and_never_imports_interop():
    result = _run_python(
        "import sys\n"
        "sys.modules['tensorflow_recommenders'] = None\n"  # makes `import tensorflow_recommenders` fail
        "sys.modules['tf_keras'] = None\n"
        "import tfafm\n"
        "tfafm.models.build('deepfm', tfafm.data.SyntheticCriteo(num_sparse=2, num_dense=1).schema())\n"
        "assert not [m for m in sys.modules if m.startswith('tfafm.interop')], 'import tfafm loaded tfafm.interop'\n"
        "from tfafm.interop import from_keras2\n"
        "try:\n"
        "    from_keras2('model.h5')\n"
        "except tfafm.errors.UserError as error:\n"
        "    print(error)\n"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pip install 'tfafm[interop]'" in result.stdout


@pytest.mark.skipif(os.environ.get("TF_USE_LEGACY_KERAS") == "1",
                    reason="this process already collects tests/interop itself")
def test_interop_suite_under_legacy_keras():
    missing = [name for name in ("tensorflow_recommenders", "tf_keras") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (pip install 'tfafm[interop]')")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", "tests/interop"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
        env={**os.environ, "TF_USE_LEGACY_KERAS": "1", "PYTHONPATH": PYTHONPATH},
    )
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"tests/interop failed ({summary}):\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    assert " passed" in summary
