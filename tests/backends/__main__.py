import sys

from tests.backends import main

sys.exit(main())
