import sys

from bgworker.cli import main

sys.exit(main())
