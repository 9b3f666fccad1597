import sys

from letterbox.cli import main

sys.exit(main())
