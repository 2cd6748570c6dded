import sys

from fwcluster.fwctl import main

sys.exit(main())
