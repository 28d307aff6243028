"""A compress + export run from Python prints no warning of tfafm's making (issue 18)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import os, sys, tempfile
    import tfafm
    data = tfafm.load_data("synthetic:3000", batch_size=500)
    model = tfafm.models.build("deepfm", data.schema, hidden_units=(32, 16))
    small, _ = tfafm.compress(model, data.train.take(4), target_ratio=4, progress=False)
    folder = tempfile.mkdtemp()
    checked = data.validation.take(1)
    tfafm.export.litert(small, os.path.join(folder, "s.tflite"), quantization="dynamic", verification_data=checked)
    tfafm.export.onnx(small, os.path.join(folder, "s.onnx"), verification_data=checked)
    print("exported")
""")


def test_compress_and_export_print_no_warning():
    # TF_CPP_MIN_LOG_LEVEL only hides TensorFlow's C++ start-up notes; Python warnings keep their defaults.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "default"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("exported")
    # TensorFlow's native runtime announces its own logger once at start-up, whatever the log level.
    lines = [line for line in result.stderr.splitlines() if "before absl::InitializeLog() is called" not in line]
    noise = [line for line in lines if "warning" in line.lower() or line.startswith("Instructions for updating")]
    assert noise == [], "\n".join(noise)
