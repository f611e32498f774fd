"""A stand-in for `vllm serve` in the server lifecycle tests: a real process with a /health route.

    python tests/stand_in_server.py --port 8123 --healthy-after 1 --worker-pid-file /tmp/w.pid

Like vLLM it forks a worker process (its pid goes to --worker-pid-file), so the tests can check
that stopping the server takes the whole process group down. /health answers 503 until
--healthy-after seconds have passed (never, with a negative value), then 200. --exit-after makes
it die on its own, like a server that fails while loading the model.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--healthy-after", type=float, default=0.0)
    parser.add_argument("--exit-after", type=float, default=None)
    parser.add_argument("--worker-pid-file", type=Path, default=None)
    args = parser.parse_args()
    started = time.monotonic()
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    if args.worker_pid_file:
        args.worker_pid_file.write_text(str(worker.pid))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            healthy = 0 <= args.healthy_after <= time.monotonic() - started
            self.send_response(200 if self.path == "/health" and healthy else 503)
            self.end_headers()

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"serving on {args.port}", flush=True)
    if args.exit_after is not None:
        time.sleep(args.exit_after)
        print("giving up", flush=True)
        sys.exit(3)
    threading.Event().wait()


if __name__ == "__main__":
    main()
