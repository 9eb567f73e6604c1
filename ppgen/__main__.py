"""``python -m ppgen`` runs the command-line interface.

``python -m`` puts the current directory first on ``sys.path``; it is taken off again here (as
``python -P`` would), so that a file in whatever directory the command runs in (a downloaded run
directory, say) cannot shadow a module ppgen imports later. The ``ppgen`` console script never
had it there.
"""

import os
import sys

if sys.path and not sys.flags.safe_path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from ppgen.cli import main  # noqa: E402

raise SystemExit(main())
