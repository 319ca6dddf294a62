"""``python -m ccm``: the same command line as the ``cloudsigma-ccm`` console script."""

import sys

from ccm.cli import main

if __name__ == "__main__":
    sys.exit(main())
