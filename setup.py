"""Package metadata for tfafm."""

from setuptools import find_packages, setup

setup(
    name="tfafm",
    version="0.1.0",
    description="Low-rank compression (Atomic Feature Mimicking) of Keras CTR models for CPUs and phones.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tfafm", "tfafm.*"]),
    py_modules=["tfafm_cli"],  # the console script's front: parses arguments before TensorFlow is imported
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.12",
        "keras-rs>=0.4",
        "numpy>=1.26",
        "scikit-learn>=1.4",
        "rich>=13",
        "pyyaml>=6",
        "pyarrow>=16",
    ],
    extras_require={
        "export": ["ai-edge-litert>=2.0", "tf2onnx>=1.17", "onnxruntime>=1.20", "onnx>=1.17"],
        "plot": ["matplotlib>=3.8"],
        "interop": ["tensorflow-recommenders", "tf-keras"],
        "test": ["pytest>=8"],
    },
    entry_points={"console_scripts": ["tfafm=tfafm_cli:main"]},
)
