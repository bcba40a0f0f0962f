"""What one generation request may ask for: bounded whoever sends it (the web UI serves strangers too)."""

MAX_STEPS = 1000
MAX_IMAGES = 64
MAX_SIDE = 4096  # pixels, width and height
MAX_SEED = 2**32 - 1  # A1111's range; a batch uses seed + i, far inside torch's 64-bit generator
