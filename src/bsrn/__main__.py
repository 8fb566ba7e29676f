"""``python -m bsrn`` (also ``torchrun -m bsrn train ...``)."""
from .cli import main

raise SystemExit(main())
