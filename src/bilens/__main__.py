import sys

from bilens.cli import main

sys.exit(main())
