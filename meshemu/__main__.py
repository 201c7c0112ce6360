import sys

from meshemu.cli import main

sys.exit(main())
