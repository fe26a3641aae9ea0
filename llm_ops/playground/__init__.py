"""The playground: a page at https://HOST/ to talk to the models in a browser, through /v1.

Static files only (HTML, CSS, JavaScript; no build step, nothing fetched from elsewhere), served by the
router (`llm_ops.router.app`): `/` is the page, `/playground/...` its files.
"""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
URL_PREFIX = "/playground"
