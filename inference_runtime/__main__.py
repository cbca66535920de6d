import sys

from inference_runtime.cli import main

sys.exit(main())
