"""seqjax: LSTM-family text classifiers in JAX/Flax. Install with `pip install -e ".[test]"`."""

import pathlib
import re

import setuptools

HERE = pathlib.Path(__file__).parent
# The version is written once, in seqjax/__init__.py.
VERSION = re.search(r'^__version__ = "([^"]+)"$',
                    (HERE / "seqjax" / "__init__.py").read_text(encoding="utf-8"), re.M)[1]

setuptools.setup(
    name="seqjax",
    version=VERSION,
    description="LSTM-family text classifiers in JAX/Flax, faithful to the classic Keras "
                "IMDB tutorial.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["seqjax", "seqjax.*"]),
    # The native LSTM kernel's source: compiled on first use (seqjax/native_lstm.py).
    package_data={"seqjax": ["native_lstm.cc"]},
    python_requires=">=3.11",
    # Minimum versions are the ones the test suite was run with.
    install_requires=[
        "absl-py>=2.5.1",
        "array_record>=0.8.6",
        "clu>=0.0.12",
        "flax>=0.12.8",
        "importlib_resources>=7.1.0",  # tensorflow-datasets 4.9.10 imports it undeclared.
        "jax>=0.10.2",
        "ml-collections>=1.1.0",
        "numpy>=2.4",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "tensorboard>=2.21.0",
        "tensorflow-datasets>=4.9.10",
        "tqdm>=4.70.1",  # The progress line on a terminal.
        # clu's TensorBoard writer and TFDS' download-and-prepare of IMDB both need TensorFlow;
        # no model code runs in it.
        "tensorflow-cpu>=2.21.0; platform_system == 'Linux'",
        "tensorflow>=2.21.0; platform_system != 'Linux'",
    ],
    extras_require={
        "test": ["pytest>=9.0", "hypothesis>=6.155"],
        # benchmarks/benchmark.py times the same models in PyTorch too (Keras 3 comes with
        # TensorFlow).
        "bench": ["torch>=2.13"],
        # experiments/*.py draw learning curves.
        "experiments": ["matplotlib>=3.11"],
    },
)
