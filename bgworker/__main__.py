import sys

from bgworker.cli.main import main

sys.exit(main())
