from setuptools import find_packages, setup

setup(
    name="fuxi-linear",
    version="0.1.0",
    description="FuXi-Linear: linear-attention sequential recommendation with Triton kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # 3.10: numpy >= 2.1 (below) needs it. CI tests 3.11; the sources compile on 3.10.
    python_requires=">=3.10",
    # The Triton code lives in the top-level kernels/ folder but installs as fuxi_linear.kernels: a top-level
    # module named "kernels" would clash with another PyPI package of that name.
    packages=find_packages(include=["fuxi_linear", "fuxi_linear.*"]) + ["fuxi_linear.kernels"],
    package_dir={"fuxi_linear.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "triton; platform_system == 'Linux'",
        "einops",
        "numpy>=2.1",  # np.strings.partition (the dataset readers' fast path)
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis"],
        "plot": ["matplotlib"],
    },
    entry_points={"console_scripts": ["fuxi-linear=fuxi_linear.cli:main"]},
)
