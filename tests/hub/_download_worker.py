"""One of several processes downloading the same registered model: ``python _download_worker.py NAME URL HASHES``.

Prints the model folder; its log (stderr) says whether it waited for another process.
"""

import json
import sys

import scgpt

name, url, hashes = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
scgpt.hub.register(name, files=hashes, urls=url + "/{file}")
print(scgpt.hub.download(name, progress=False))
