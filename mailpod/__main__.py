import sys

from mailpod.cli import main

sys.exit(main())
