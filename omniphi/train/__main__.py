"""`python -m omniphi.train RECIPE.yaml [...]`, also under `torchrun --nproc_per_node N -m omniphi.train`."""

import sys

from omniphi.train.cli import main

sys.exit(main())
