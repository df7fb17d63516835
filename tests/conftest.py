import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import os as _os
import tempfile as _tempfile

# Host profiles written by `gpusim calibrate` change the default cost profile; the tests never see the user's.
_os.environ["GPUSIM_PROFILE_DIR"] = _tempfile.mkdtemp(prefix="gpusim-test-profiles-")
