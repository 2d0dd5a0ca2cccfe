from setuptools import find_packages, setup

setup(
    name="s4speech",
    version="0.1.0",
    description="Structured state space (S4) encoders and decoders for ESPnet ASR and TTS",
    packages=find_packages(include=["s4speech", "s4speech.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch==2.11.0",
        "torchaudio==2.11.0",
        "espnet==202511",
        "sentencepiece==0.2.0",
        "librosa>=0.10",
        "jiwer>=3.0",
        "soundfile>=0.12",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "numpy",
        "pyyaml",
        "tensorboard",  # ESPnet's trainer imports it (not declared by ESPnet)
    ],
    # dev: the tests (pyopenjtalk-plus: Japanese speech for the CSJ fixtures; wheel: the packaging test)
    extras_require={"dev": ["pytest>=8", "pyopenjtalk-plus", "wheel"]},
    entry_points={"console_scripts": ["s4speech=s4speech.cli:main"]},
)
