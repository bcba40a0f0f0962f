"""Run the lora-diffusion web UI from a source checkout: ``python ui/app.py [--port 7860 ...]``.

The page itself lives in ``lora_diffusion/ui`` so that ``pip install`` ships it and
``lora-diffusion ui`` (same flags) starts it.
"""

import sys

from lora_diffusion.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["ui", *sys.argv[1:]]))
