"""Package metadata for tfafm."""

import re

from setuptools import find_packages, setup

# The version is written once, in tfafm/__init__.py.
VERSION = re.search(r'^__version__ = "([^"]+)"', open("tfafm/__init__.py", encoding="utf-8").read(), re.M).group(1)

setup(
    name="tfafm",
    version=VERSION,
    description="Low-rank compression (Atomic Feature Mimicking) of Keras CTR models for CPUs and phones.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tfafm", "tfafm.*"]),
    # the console script's front (parses arguments before TensorFlow is imported) and the choices it
    # shares with the package
    py_modules=["tfafm_cli", "tfafm_choices"],
    install_requires=[
        "tensorflow>=2.21,<2.22",
        # tfafm touches a few private Keras names (tfafm/graph.py,
        # tfafm/layers/attention.py) and replays keras_rs FeatureCross: tested minors only.
        "keras>=3.15,<3.16",
        "keras-rs>=0.4,<0.5",
        "numpy>=1.26",
        "scikit-learn>=1.4",
        "rich>=13",
        "pyyaml>=6",
        "pyarrow>=16",
    ],
    extras_require={
        "export": ["ai-edge-litert>=2.0", "tf2onnx>=1.17", "onnxruntime>=1.20", "onnx>=1.17"],
        "plot": ["matplotlib>=3.8"],
        # TFRS needs Keras 2: tf-keras must match TensorFlow's minor version.
        "interop": ["tensorflow-recommenders>=0.7.7,<0.8", "tf-keras>=2.21,<2.22"],
        "test": ["pytest>=8"],
    },
    entry_points={"console_scripts": ["tfafm=tfafm_cli:console"]},
)
