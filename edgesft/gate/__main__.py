"""``python -m edgesft.gate worker SPEC_JSON``: one timing worker (:func:`edgesft.gate.worker.serve`)."""

import json
import os
import sys

from edgesft.gate.worker import serve

if len(sys.argv) != 3 or sys.argv[1] != "worker":
    sys.exit("usage: python -m edgesft.gate worker SPEC_JSON")
code = serve(json.loads(sys.argv[2]))
sys.stderr.flush()
os._exit(code)  # skip interpreter teardown (a second of torch's on a small runner): all is closed
