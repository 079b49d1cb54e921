import sys

from ringlb_harness.backends.process import main

sys.exit(main())
