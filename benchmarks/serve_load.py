"""Serving load test: N concurrent streaming clients against three HTTP servers, in one run.

    .venv/bin/python -m benchmarks.serve_load                       # bundled model
    .venv/bin/python -m benchmarks.serve_load --model DIR --clients 1,8,32
    .venv/bin/python -m benchmarks.serve_load --models smollm2-135m-instruct,pycoder

Systems, each started here as a subprocess on a free port and stopped after its runs:
  * gaudi-serve    `gaudi-serve up` (Ray Serve, continuous batching, paged KV cache)
  * hf-serve       `transformers serve --continuous-batching` (needs `accelerate`)
  * plain-serve    a plain Ray Serve deployment calling transformers `generate` per request
                   (one thread per request, no batching; `--plain-server` runs it)

Each client sends `--requests-per-client` streamed /v1/completions requests one after
another (greedy, `--max-tokens` each, EOS ignored where the server allows it). Reported per
system and client count: output tokens/s over the whole run, time to first token (TTFT) and
inter-token latency (ITL: per request, the mean gap between tokens after the first) p50/p99
over requests. Tokens are counted from the stream's usage event where the server sends one,
else one per text event. Also reported, at every client count: CPU milliseconds per
generated token of each process of the server (the server and everything under it, from
psutil), and for gaudi-serve the part of it spent in the forward (its replicas'
`forward_cpu_s` on /metrics: the stepping thread's CPU in the executor plus torch's worker
threads', engine.thread_cpu), and what is left outside it. Every server gets the same CPU
threads (OMP_NUM_THREADS = --num-threads).

`--models A,B` runs every system on each model in turn, in one run (each row names its
model). `--engine max_model_len=256,max_num_seqs=16` starts gaudi-serve from a serving config
with these engine options (its warm-up runs every bucket up to them, which takes minutes for
a 135M model on 2 loaded cores; the defaults are the model's context capped at 4096, 32).
"""

# NOTE: no `from __future__ import annotations`: FastAPI must see the plain server's real
# annotations (a string "Request" would become a required query parameter).
import argparse
import asyncio
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.workload import code_prompts, model_list

SYSTEMS = ("gaudi-serve", "hf-serve", "plain-serve")
START_TIMEOUT_S = 1800  # gaudi-serve warms every bucket up before it reports healthy


# -- load generation ---------------------------------------------------------------------
@dataclass
class RequestResult:
    ttft_s: float
    itl_s: float | None  # mean gap between tokens after the first (TPOT)
    num_tokens: int


@dataclass
class RunResult:
    system: str
    num_clients: int
    wall_s: float
    requests: list[RequestResult] = field(default_factory=list)
    num_errors: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(r.num_tokens for r in self.requests)

    def row(self) -> dict:
        ttfts = [r.ttft_s for r in self.requests]
        itls = [r.itl_s for r in self.requests if r.itl_s is not None]
        return {
            "system": self.system,
            "clients": self.num_clients,
            "requests": len(self.requests),
            "errors": self.num_errors,
            "output_tok_s": self.num_tokens / self.wall_s,
            "tokens_per_request": self.num_tokens / max(1, len(self.requests)),
            "ttft_p50_ms": _pct(ttfts, 50) * 1e3,
            "ttft_p99_ms": _pct(ttfts, 99) * 1e3,
            "itl_p50_ms": _pct(itls, 50) * 1e3,
            "itl_p99_ms": _pct(itls, 99) * 1e3,
        }


def _pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> RequestResult:
    """Send one streamed request. Tokens are counted from the final usage event when the
    server sends one (a chunk may carry several tokens), else one per text event."""
    start = time.perf_counter()
    times = []
    num_tokens = None
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[len("data:") :])
            if "error" in event:
                raise RuntimeError(f"error event: {event['error']}")
            choices = event.get("choices") or []
            if choices and choices[0].get("text"):
                times.append(time.perf_counter())
            if event.get("usage"):
                num_tokens = event["usage"]["completion_tokens"]
    if not times:
        raise RuntimeError("no token received")
    num_tokens = num_tokens or len(times)
    # Inter-token latency: the mean gap between this request's tokens after the first.
    itl_s = (times[-1] - times[0]) / (num_tokens - 1) if num_tokens > 1 else None
    return RequestResult(times[0] - start, itl_s, num_tokens)


async def run_load(
    system: str, url: str, bodies: list[dict], num_clients: int, requests_per_client: int
) -> RunResult:
    result = RunResult(system, num_clients, 0.0)
    limits = httpx.Limits(max_connections=num_clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def client_loop(client_index: int) -> None:
            for i in range(requests_per_client):
                body = bodies[(client_index * requests_per_client + i) % len(bodies)]
                try:
                    result.requests.append(await one_request(client, url, body))
                except Exception as exc:
                    result.num_errors += 1
                    print(f"  {system}: request failed: {exc}", file=sys.stderr)

        start = time.perf_counter()
        await asyncio.gather(*(client_loop(c) for c in range(num_clients)))
        result.wall_s = time.perf_counter() - start
    return result


# -- the systems -------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def system_command(
    system: str,
    model: Path,
    name: str,
    port: int,
    num_threads: int,
    config: Path | None = None,
):
    """(argv, model id to send, extra request fields) of one system. `config`: a serving
    config gaudi-serve starts from instead of --model (see gaudi_serve_config)."""
    if system == "gaudi-serve":
        argv = [sys.executable, "-m", "cluster.commands.cli", "up"]
        argv += ["--config", str(config)] if config else ["--model", str(model), "--name", name]
        argv += ["--port", str(port), "--num-cpus", str(num_threads)]
        return argv, name, {"ignore_eos": True, "stream_options": {"include_usage": True}}
    if system == "hf-serve":
        argv = [str(Path(sys.executable).parent / "transformers"), "serve"]
        argv += ["--continuous-batching", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--device", "cpu", "--dtype", "float32", str(model)]
        return argv, str(model), {}
    if system == "plain-serve":
        argv = [sys.executable, "-m", "benchmarks.serve_load", "--plain-server"]
        argv += ["--model", str(model), "--port", str(port)]
        return argv, name, {"ignore_eos": True}
    raise ValueError(f"system must be one of {list(SYSTEMS)}, got {system!r}")


def engine_options(text: str) -> dict:
    """--engine's NAME=VALUE,... as a dict, each value read as YAML (256 -> int)."""
    import yaml

    options = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--engine must be NAME=VALUE[,NAME=VALUE...], got {text!r}")
        options[name.strip()] = yaml.safe_load(value)
    return options


def gaudi_serve_config(model: Path, name: str, engine: dict, folder: Path) -> Path:
    """Write a serving config of one model with these engine options into `folder` (the
    config's loader validates them when gaudi-serve starts)."""
    import yaml

    data = {"models": [{"name": name, "path": str(model), "engine": engine}]}
    path = folder / f"{name}.serve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def hf_serve_folder(model: Path, folder: Path) -> Path:
    """The model folder to give `transformers serve`, which picks the model's class from
    config.json's `architectures`: `model` itself when it names one, else `folder` holding
    links to its files and a config.json with the causal-LM class of its model_type (a
    prepared smollm2-135m-instruct has no `architectures`)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = json.loads((model / "config.json").read_text())
    if config.get("architectures"):
        return model
    architecture = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type"))
    if architecture is None:
        raise ValueError(
            f"{model}/config.json: model_type must be a transformers causal LM, "
            f"got {config.get('model_type')!r}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for source in model.iterdir():
        link = folder / source.name
        if source.name != "config.json" and not link.exists():
            link.symlink_to(source.resolve())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": [architecture]}))
    return folder


def unavailable_reason(system: str) -> str | None:
    if system == "hf-serve" and importlib.util.find_spec("accelerate") is None:
        return "`transformers serve` needs `accelerate`, which is not installed"
    return None


def start(
    argv: list[str], url: str, num_threads: int, log: Path, extra_env: dict[str, str]
) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(num_threads), "RAY_AUTH_MODE": "disabled"}
    env.update(extra_env)
    with log.open("w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{argv[:4]} exited with {process.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop(process)
    raise TimeoutError(f"{argv[:4]} not healthy after {START_TIMEOUT_S}s; see {log}")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- where the CPU goes -----------------------------------------------------------------
def process_tree_cpu_s(process: subprocess.Popen) -> dict[tuple[int, str], float]:
    """CPU seconds (user + system) so far of the server and every process under it (Ray's
    raylet, GCS and workers are children of an embedded Ray's driver), keyed by (pid, name)."""
    import psutil

    root = psutil.Process(process.pid)
    out = {}
    for proc in (root, *root.children(recursive=True)):
        try:
            times = proc.cpu_times()
            out[(proc.pid, _process_name(proc))] = times.user + times.system
        except psutil.Error:  # exited in between
            continue
    return out


def _process_name(proc) -> str:
    """Ray workers retitle themselves `ray::<Actor>` (Serve replicas:
    `ray::ServeReplica:<app>:<deployment>`); anything else by its executable name."""
    cmdline = proc.cmdline()
    if cmdline and cmdline[0].startswith("ray::"):
        return cmdline[0].split()[0]
    return proc.name()


FORWARD_METRIC = "gaudi_serve_engine_forward_cpu_s"


def forward_thread_cpu_s(url: str) -> float | None:
    """gaudi-serve's replicas' CPU seconds in the forward, summed (from /metrics); None for
    a server that does not export it."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=30).text
    except httpx.HTTPError:
        return None
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        # untyped, or a counter (`_total`) once deployments.metrics declares its kind
        if line.startswith((f"{FORWARD_METRIC}{{", f"{FORWARD_METRIC}_total{{"))
    ]
    return sum(values) if values else None


def forward_share(
    cpu_ms: dict[str, float], before: float | None, after: float | None, num_tokens: int
) -> dict[str, float]:
    """The forward's CPU ms per token, its share of the total and the CPU ms per token
    outside it; {} when the server exports no forward time."""
    if before is None or after is None:
        return {}
    forward_ms = 1e3 * (after - before) / max(1, num_tokens)
    total = cpu_ms["total"]
    return {
        "forward_ms_per_token": round(forward_ms, 3),
        "forward_share": round(forward_ms / total, 3) if total else 0.0,
        "outside_forward_ms_per_token": round(total - forward_ms, 3),
    }


def cpu_per_token_ms(before: dict, after: dict, num_tokens: int) -> dict[str, float]:
    """Milliseconds of CPU per generated token over one run, summed by process name (only
    names that used at least 0.05 ms/token), plus "total"."""
    by_name: dict[str, float] = {}
    for key, seconds in after.items():
        name = key[1]
        by_name[name] = by_name.get(name, 0.0) + seconds - before.get(key, 0.0)
    per_token = {n: 1e3 * s / max(1, num_tokens) for n, s in by_name.items()}
    kept = {n: round(v, 3) for n, v in sorted(per_token.items()) if v >= 0.05}
    kept["total"] = round(sum(per_token.values()), 3)
    return kept


# -- the plain Ray Serve baseline --------------------------------------------------------
def run_plain_server(model: Path, port: int) -> int:
    """A Ray Serve app that runs transformers `generate` once per request, streaming tokens
    (the baseline a team would write first). Serves until SIGINT / SIGTERM."""
    import threading

    from ray import serve

    from cluster.ray_env import ensure_ray

    app = _plain_app()
    ensure_ray(num_cpus=os.cpu_count())
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app.bind(str(model)), name="plain", route_prefix="/")
    while not stopped.wait(0.5):
        pass
    serve.shutdown()
    return 0


def _plain_app():
    import queue
    import threading

    import torch
    from fastapi import FastAPI, Request
    from ray import serve
    from starlette.responses import JSONResponse, StreamingResponse
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    api = FastAPI()

    class TokenStreamer(BaseStreamer):
        """Hands each generated token id to a queue (the first put is the prompt)."""

        def __init__(self) -> None:
            self.queue: queue.Queue = queue.Queue()
            self.is_prompt = True

        def put(self, value) -> None:
            if self.is_prompt:
                self.is_prompt = False
                return
            self.queue.put(int(value.reshape(-1)[0]))

        def end(self) -> None:
            self.queue.put(None)

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
    @serve.ingress(api)
    class PlainGenerate:
        def __init__(self, path: str):
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

        @api.get("/health")
        async def health(self):
            return JSONResponse({"healthy": True})

        @api.post("/v1/completions")
        async def completions(self, request: Request):
            body = await request.json()
            ids = torch.tensor([self.tokenizer.encode(body["prompt"])])
            streamer = TokenStreamer()
            kwargs = dict(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=body.get("max_tokens", 16),
                do_sample=False,
                streamer=streamer,
                pad_token_id=self.tokenizer.eos_token_id,
            )
            if body.get("ignore_eos"):
                kwargs["eos_token_id"] = None

            def generate() -> None:
                with torch.inference_mode():
                    self.model.generate(**kwargs)

            threading.Thread(target=generate, daemon=True).start()

            async def events():
                loop = asyncio.get_running_loop()
                while (token := await loop.run_in_executor(None, streamer.queue.get)) is not None:
                    text = self.tokenizer.decode([token])
                    yield f"data: {json.dumps({'choices': [{'index': 0, 'text': text}]})}\n\n"
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

    return PlainGenerate


# -- main --------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None, help="model folder (default: bundled)")
    p.add_argument("--name", default="pycoder", help="model id for gaudi-serve")
    p.add_argument(
        "--models",
        default=None,
        help="comma-separated model names (engine.assets.MODEL_NAMES) or folders, each run "
        "on every system in turn (instead of --model and --name)",
    )
    p.add_argument(
        "--engine",
        default="",
        metavar="NAME=VALUE[,NAME=VALUE...]",
        help="gaudi-serve engine options of a serving config (e.g. max_model_len=256); "
        "default: none, gaudi-serve up --model",
    )
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--clients", default="1,8,32", help="comma-separated client counts")
    p.add_argument("--requests-per-client", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--min-prompt-len", type=int, default=16)
    p.add_argument("--max-prompt-len", type=int, default=128)
    p.add_argument("--num-threads", type=int, default=os.cpu_count())
    p.add_argument(
        "--stream-interval-ms",
        default="0",
        help="gaudi-serve's stream interval(s), comma-separated: one gaudi-serve run each "
        "(0, the default: a chunk per engine step)",
    )
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:NAME=VALUE[,NAME=VALUE...]",
        help="one more gaudi-serve run with these environment variables (e.g. Ray Serve "
        "settings), labelled 'gaudi-serve, LABEL'; repeatable",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--log-dir", type=Path, default=Path("/tmp/serve_load_logs"))
    p.add_argument("--plain-server", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.model is None:
        from engine.assets import default_model_path

        args.model = default_model_path()
    if args.plain_server:
        return run_plain_server(args.model, args.port)
    models = model_list(args.models) if args.models else [(args.model, args.name)]
    args.log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for model, name in models:
        rows += run_model(args, model, name)
    print(markdown_table(rows))
    print()
    print(cpu_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def run_model(args, model: Path, name: str) -> list[dict]:
    """The rows of every system (and gaudi-serve variant) serving one model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    num_prompts = max(int(c) for c in args.clients.split(",")) * args.requests_per_client
    prompts = code_prompts(tokenizer, num_prompts, args.min_prompt_len, args.max_prompt_len)
    texts = [tokenizer.decode(p) for p in prompts]
    config = None
    if args.engine:
        config = gaudi_serve_config(model, name, engine_options(args.engine), args.log_dir)
    hf_model = hf_serve_folder(model, args.log_dir / f"{name}.hf-serve")
    rows = []
    for system, label, extra_env in runs(args):
        reason = unavailable_reason(system)
        if reason is not None:
            print(f"{system}: skipped: {reason}", file=sys.stderr)
            rows.append({"model": name, "system": label, "skipped": reason})
            continue
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        served = hf_model if system == "hf-serve" else model
        argv_, model_id, extra = system_command(
            system, served, name, port, args.num_threads, config
        )
        print(f"{name}, {label}: starting {' '.join(argv_)}", file=sys.stderr)
        log = args.log_dir / f"{name}_{label.replace(' ', '_').replace(',', '')}.log"
        process = start(argv_, url, args.num_threads, log, extra_env)
        try:
            bodies = [
                {
                    "model": model_id,
                    "prompt": text,
                    "max_tokens": args.max_tokens,
                    "temperature": 0,
                    "stream": True,
                    **extra,
                }
                for text in texts
            ]
            asyncio.run(run_load(label, url, bodies[:2], 2, 1))  # warm the path up
            for num_clients in (int(c) for c in args.clients.split(",")):
                forward_before = forward_thread_cpu_s(url) if system == "gaudi-serve" else None
                cpu_before = process_tree_cpu_s(process)
                result = asyncio.run(
                    run_load(label, url, bodies, num_clients, args.requests_per_client)
                )
                cpu_after = process_tree_cpu_s(process)
                forward_after = forward_thread_cpu_s(url) if system == "gaudi-serve" else None
                rows.append({"model": name, **result.row()})
                cpu_ms = cpu_per_token_ms(cpu_before, cpu_after, result.num_tokens)
                rows[-1]["cpu_ms_per_token"] = cpu_ms
                rows[-1].update(
                    forward_share(cpu_ms, forward_before, forward_after, result.num_tokens)
                )
                print(json.dumps(rows[-1]), file=sys.stderr)
        finally:
            stop(process)
    return rows


def runs(args) -> list[tuple[str, str, dict[str, str]]]:
    """(system, label, extra env) of every server to start: gaudi-serve once per stream
    interval, then once per --variant."""
    out = []
    for system in args.systems.split(","):
        if system != "gaudi-serve":
            out.append((system, system, {}))
            continue
        for interval in args.stream_interval_ms.split(","):
            label = system if float(interval) == 0 else f"{system}, stream {interval} ms"
            out.append((system, label, {"GAUDI_SERVE_STREAM_INTERVAL_MS": interval}))
        for variant in args.variant:
            label, _, assignments = variant.partition(":")
            env = dict(a.split("=", 1) for a in assignments.split(",") if "=" in a)
            if not label or not env:
                raise ValueError(f"--variant must be LABEL:NAME=VALUE[,...], got {variant!r}")
            out.append((system, f"{system}, {label}", env))
    return out


def cpu_table(rows: list[dict]) -> str:
    """CPU ms per generated token by process at every client count, with the forward's
    share where the server reports it."""
    lines = [
        "| model | system | clients | CPU ms per generated token, by process "
        "| forward ms (share) | outside the forward ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            continue
        parts = ", ".join(f"{n} {v:.2f}" for n, v in r["cpu_ms_per_token"].items())
        forward = outside = "-"
        if "forward_ms_per_token" in r:
            forward = f"{r['forward_ms_per_token']:.2f} ({100 * r['forward_share']:.0f}%)"
            outside = f"{r['outside_forward_ms_per_token']:.2f}"
        lines.append(
            f"| {r['model']} | {r['system']} | {r['clients']} | {parts} | {forward} | {outside} |"
        )
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| model | system | clients | requests | tokens/request | output tok/s | TTFT p50 ms "
        "| TTFT p99 ms | ITL p50 ms | ITL p99 ms | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(
                f"| {r['model']} | {r['system']} | - | - | - | skipped: {r['skipped']} | | | | | |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['system']} | {r['clients']} | {r['requests']} "
            f"| {r['tokens_per_request']:.1f} | {r['output_tok_s']:.0f} "
            f"| {r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} | {r['itl_p50_ms']:.1f} "
            f"| {r['itl_p99_ms']:.1f} | {r['errors']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
