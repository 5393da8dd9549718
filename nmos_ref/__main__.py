"""`python -m nmos_ref`: the same as the `nmos-ref` command (nmos_ref.launcher)."""

import sys

from nmos_ref.launcher import main

sys.exit(main())
