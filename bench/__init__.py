"""Offline quality benchmark for the NS-N2N denoiser (see ``bench/quality.py``)."""
