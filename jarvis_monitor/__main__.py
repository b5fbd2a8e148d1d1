import sys

from jarvis_monitor.cli import main

sys.exit(main())
