import sys

from stbp.cli import main

sys.exit(main())
