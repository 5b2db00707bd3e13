import sys

from mtcolor.cli import main

sys.exit(main())
