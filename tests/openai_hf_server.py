"""A minimal OpenAI-compatible chat server over ``HFEngine``, for the OpenAI engine's fault tests.

Run as ``python openai_hf_server.py MODEL_PATH PORT [--no-n]``. It serves ``GET /v1/models`` and
``POST /v1/chat/completions`` (messages, n, seed, temperature, top_p, max_tokens) with the real
embedded model, one request at a time. It refuses ``logprobs`` with HTTP 400 (as servers without
that feature do) and, with ``--no-n``, any ``n`` > 1 (as some servers do). Starting takes seconds,
so tests can kill and restart it; ``vllm serve`` (tested separately) takes minutes.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from metareward.engines.base import GenerationRequest, SamplingParams
from metareward.engines.hf import HFEngine


def main() -> None:
    model_path, port = sys.argv[1], int(sys.argv[2])
    no_n = "--no-n" in sys.argv
    engine = HFEngine(model_path, device="cpu", dtype="float32", batch_size=16, threads=1)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                self.reply(200, {"object": "list", "data": [{"id": model_path, "object": "model"}]})
            else:
                self.reply(404, {"error": {"message": "not found"}})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self.reply(404, {"error": {"message": "not found"}})
            if body.get("model") != model_path:
                return self.reply(404, {"error": {"message": f"model {body.get('model')!r} not found"}})
            if body.get("logprobs"):
                return self.reply(400, {"error": {"message": "logprobs are not supported by this server"}})
            n = int(body.get("n") or 1)
            if no_n and n > 1:
                return self.reply(400, {"error": {"message": "'n' must be 1 on this server"}})
            req = GenerationRequest(
                id="r",
                messages=tuple(body["messages"]),
                sampling=SamplingParams(
                    temperature=float(body.get("temperature", 1.0)),
                    top_p=float(body.get("top_p", 1.0)),
                    max_tokens=int(body.get("max_tokens") or 64),
                ),
                n=n,
                seed=int(body.get("seed") or 0),
            )
            (out,) = list(engine.generate([req]))
            choices = [
                {"index": i, "message": {"role": "assistant", "content": t},
                 "finish_reason": "stop" if f else "length", "logprobs": None}
                for i, (t, f) in enumerate((s.text, s.finished) for s in out.samples)
            ]
            tokens = out.generated_tokens
            usage = {"prompt_tokens": 0, "completion_tokens": tokens, "total_tokens": tokens}
            self.reply(200, {"id": "cmpl", "object": "chat.completion", "created": 0, "model": model_path,
                             "choices": choices, "usage": usage})

    class Server(HTTPServer):
        request_queue_size = 64  # the client's concurrent connections wait here, one served at a time

    server = Server(("127.0.0.1", port), Handler)
    print("READY", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
