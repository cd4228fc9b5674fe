"""weaverlab: attention models and a profiling harness for weaver-core (package ``weaver_ext``)."""

from setuptools import find_packages, setup

# torch is pinned to the CPU wheel that lies on local disk; install it first (the Makefile does)
# so that no other requirement pulls a multi-GB CUDA build.
INSTALL_REQUIRES = [
    "torch==2.13.0",
    "weaver-core==0.5.3",
    "pythia8mc==8.317.2",
    "fastjet>=3.4,<3.6",
    "uproot>=5.3,<6",
    "awkward>=2.6,<3",
    "numpy>=1.26",
    "scipy>=1.11",
    "scikit-learn>=1.3",
    "pyyaml>=6",
    "tqdm>=4.60",
    "ptflops>=0.7.4",
    "tabulate>=0.9",
    "matplotlib>=3.8",
    "tensorboard>=2.15",
    "onnx>=1.16",
    "onnxruntime>=1.18",
]

setup(
    name="weaverlab",
    version="0.1.0",
    description="Attention-model plugin and profiling harness for weaver-core",
    python_requires=">=3.10",
    packages=find_packages(include=["weaver_ext*", "data*", "profiling*", "evaluation*", "networks*"]),
    package_data={"data": ["JetClass/*.yaml", "Tracks/*.yaml"], "weaver_ext": ["csrc/*.cpp"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"dev": ["pytest>=8", "ruff>=0.5"]},
    entry_points={
        "console_scripts": [
            "weaverlab-generate=data.generate:main",
            "weaverlab-profile=profiling.forward:main",
        ]
    },
)
