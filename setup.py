"""prime-megatron: PRIME (implicit process rewards) RL training on megatron-core."""
from setuptools import find_packages, setup

setup(
    name="prime-megatron",
    version="0.1.0",
    description="PRIME reinforcement learning with implicit process rewards on megatron-core",
    packages=find_packages(include=["prime_megatron", "prime_megatron.*"]),
    python_requires=">=3.11",
    install_requires=[
        # torch is pinned by the install script (tools/install.sh), not here: see README.
        "torch>=2.4",
        "megatron-core>=0.16.1",
        "psutil",  # megatron-core checkpoint save needs it but does not declare it
        "tqdm",  # megatron-core static inference needs it but does not declare it
        "numpy",
        "datasets",
        "sympy",
        "math-verify>=0.7",
        "tensorboard",
        "pyyaml",
        "safetensors",
        "transformers>=4.45",
    ],
    extras_require={
        "gpu": ["transformer-engine[pytorch]", "sglang"],
        "launch": ["nemo-run", "leptonai==0.27.3"],  # nemo-run 0.11 fails to import with newer leptonai
        # triton: runs the fused log-prob kernel under the Triton interpreter on CPU in the tests
        "test": ["pytest", "pytest-timeout", "matplotlib", "triton"],
    },
    entry_points={"console_scripts": ["prime-megatron=prime_megatron.cli:main"]},
)
