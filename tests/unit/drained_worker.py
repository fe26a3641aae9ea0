"""`python -m tests.unit.drained_worker PORT`: a worker over the fake engine (ten words, 0.2 s apart),
served as `llm-ops worker` serves (`llm_ops.serving.serve`), draining 1 s after SIGTERM."""

from __future__ import annotations

import sys

from llm_ops.serving import serve
from llm_ops.settings import LifecycleSettings
from llm_ops.worker.app import create_worker_app, start_draining
from tests.unit.fake_engine import FakeEngine, open_fake_service

if __name__ == "__main__":
    engine = FakeEngine(words=[f" word{n}" for n in range(10)], delay=0.2, max_model_len=256)
    app = create_worker_app(lambda: open_fake_service(engine))
    lifecycle = LifecycleSettings(drain_seconds=1.0, graceful_timeout=10.0)
    serve(app, "127.0.0.1", int(sys.argv[1]), "info", lifecycle, on_drain=lambda: start_draining(app))
