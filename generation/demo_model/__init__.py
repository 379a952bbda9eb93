"""Studio's bundled demo model: a tiny latent diffusion model trained on captioned shapes.

Pure Python over torch, diffusers, transformers and tokenizers; no Django imports here.
"""

import os
from pathlib import Path

# On a shared 2-core machine OpenMP's default spin-waiting made training steps 3-5x slower
# whenever another process was busy (VAE step: 1.0 s passive vs 3-5 s spinning). It only takes
# effect when set before torch first loads, so long runs also set it on their command line.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
