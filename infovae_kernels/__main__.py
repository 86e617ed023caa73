"""`python -m infovae_kernels ...` is the `infovae-kernels` command line."""

import sys

from infovae_kernels.cli import main

if __name__ == "__main__":
    sys.exit(main())
