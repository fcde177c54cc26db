"""Benchmark: `ft gen` requests/s against a local OpenAI-compatible server that answers after 200 ms,
beside a bare `openai.AsyncOpenAI` loop with a semaphore and the latency limit, in one run.

    python bench/gen_throughput.py [--requests 3000] [--concurrency 64] [--delay 0.2]

The server is tests/fake_llm.py in its own process (asyncio, HTTP/1.1 keep-alive, listen backlog
1024). It is measured first with a raw keep-alive HTTP client at 4× the concurrency, to show it is
not the bottleneck. Then, with the same concurrency and the same number of requests:
  * a bare loop: `openai.AsyncOpenAI` + `asyncio.Semaphore`, nothing else;
  * `ft gen --provider openai` as a user runs it (a whole process, OPENAI_BASE_URL pointing at the
    server): gates, append-as-you-go writing, progress bar, final dedup and atomic rewrite included.
Goal: ft gen ≥ 0.9× the bare loop. The latency limit is concurrency / delay (64 / 0.2 s = 320 req/s).
CPU seconds per request (client and server) say what limits each run on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pty
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "You are a helpful assistant who always answers in Doric."


def start_server(delay: float) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_llm.py"), "--delay", str(delay)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("PORT "), line
    return proc, int(line.split()[1])


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def raw_client(port: int, n: int, concurrency: int) -> float:
    """Seconds for ``n`` requests over ``concurrency`` keep-alive connections (hand-written HTTP)."""
    body = json.dumps({"model": "m", "max_tokens": 512, "messages": [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": "Fit like? Tell me aboot the harbour."}]})
    req = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
           f"content-length: {len(body)}\r\n\r\n{body}").encode()

    async def conn(k: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(k):
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
            size = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(size)
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(conn(n // concurrency) for _ in range(concurrency)))
    return time.perf_counter() - t0


async def bare_loop(port: int, n: int, concurrency: int) -> float:
    import openai

    client = openai.AsyncOpenAI(api_key="bench", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0,
                                timeout=60)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            r = await client.chat.completions.create(
                model="gpt-4o-mini", temperature=0.8, max_tokens=512,
                messages=[{"role": "system", "content": SYSTEM},
                          {"role": "user", "content": f"Question {i}: can you give me some practical advice?"}])
            assert r.choices[0].message.content

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - t0
    await client.close()
    return elapsed


def server_requests(port: int) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats") as r:
        return json.load(r)["requests"]


def ft_gen(port: int, n: int, concurrency: int, work: Path) -> dict:
    """`ft gen` as a user runs it: a whole process, stderr on a terminal (so the progress bar is drawn)."""
    per_topic = 20
    topics = [f"keeping a small allotment tidy through season number {i}" for i in range(-(-n // per_topic))]
    (work / "topics.json").write_text(json.dumps(topics))
    env = dict(os.environ, OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1", OPENAI_API_KEY="bench",
               PYTHONPATH=str(ROOT / "src"), COLUMNS="120")
    master, slave = pty.openpty()
    drained = []
    reader = threading.Thread(target=_drain, args=(master, drained), daemon=True)
    reader.start()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r0 = server_requests(port)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "finetune_cli", "gen", "--topics-json", "topics.json",
                          "--out", "gen.jsonl", "--provider", "openai", "--n-per-topic", str(per_topic),
                          "--max-concurrency", str(concurrency), "--overwrite"],
                         cwd=work, env=env, check=True, stdout=subprocess.PIPE, stderr=slave, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    os.close(slave)
    reader.join(5)
    title = re.search(r"ft gen: \S+ \((\d+) rows; ([\d.]+) s\)", out.stdout)
    assert title, out.stdout
    assert "req/s" in b"".join(drained).decode(errors="replace"), "no progress bar was drawn"
    return {"requests": server_requests(port) - r0, "rows": int(title[1]), "run_s": float(title[2]),
            "wall_s": wall,
            "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)}


def _drain(fd: int, into: list) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        into.append(chunk)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--delay", type=float, default=0.2)
    args = ap.parse_args()
    n, c = args.requests, args.concurrency
    limit = c / args.delay
    server, port = start_server(args.delay)
    rows = []
    try:
        cap_c = 4 * c
        s0 = cpu_of(server.pid)
        t = asyncio.run(raw_client(port, cap_c * 10, cap_c))
        server_cpu = (cpu_of(server.pid) - s0) / (cap_c * 10)
        rows.append((f"server alone (raw client, concurrency {cap_c})", cap_c * 10, cap_c * 10 / t,
                     cap_c / args.delay, None, server_cpu))

        import openai  # noqa: F401 - imported before the clock starts, like ft's run time excludes start-up

        s0, c0 = cpu_of(server.pid), time.process_time()
        t = asyncio.run(bare_loop(port, n, c))
        bare_rps = n / t
        rows.append(("bare openai.AsyncOpenAI + semaphore", n, bare_rps, limit, (time.process_time() - c0) / n,
                     (cpu_of(server.pid) - s0) / n))

        with tempfile.TemporaryDirectory() as d:
            s0 = cpu_of(server.pid)
            res = ft_gen(port, n, c, Path(d))
        reqs = res["requests"]
        run_rps = reqs / res["run_s"]
        proc_rps = reqs / res["wall_s"]
        rows.append(("ft gen: run (generation, dedup, rewrite)", reqs, run_rps, limit, None,
                     (cpu_of(server.pid) - s0) / reqs))
        rows.append(("ft gen: whole process (start-up included)", reqs, proc_rps, limit, res["cpu_s"] / reqs,
                     None))
    finally:
        server.kill()
        server.wait()

    print(f"cores: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()[0]:.1f}; "
          f"delay {args.delay * 1000:.0f} ms, concurrency {c}")
    print(f"{'what':<46}{'requests':>9}{'req/s':>8}{'limit':>8}{'client ms CPU/req':>19}{'server ms CPU/req':>19}")

    def ms(v: float | None) -> str:
        return f"{v * 1000:>19.2f}" if v is not None else f"{'':>19}"

    for what, k, rps, lim, ccpu, scpu in rows:
        print(f"{what:<46}{k:>9,}{rps:>8.1f}{lim:>8.0f}{ms(ccpu)}{ms(scpu)}")
    print(f"ft gen / bare loop: {run_rps / bare_rps:.2f}x (run), {proc_rps / bare_rps:.2f}x (whole process); "
          f"goal ≥ 0.9x: {'met' if run_rps >= 0.9 * bare_rps else 'MISSED'}")
    print(f"bare loop / latency limit: {bare_rps / limit:.2f}; ft gen kept {res['rows']} rows")

if __name__ == "__main__":
    main()
