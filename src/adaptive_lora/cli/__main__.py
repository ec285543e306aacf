"""`python -m adaptive_lora.cli ...` is `adaptive-lora ...`."""

import sys

from adaptive_lora.cli import main

sys.exit(main())
