"""wrk (Debian's package), the load generator of the suites that must not be limited by
their own client: its Lua scripts, a run, and its report read into numbers."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

SAME_BODY = """-- written by bench/wrk.py: POST the same body on every request
local f = assert(io.open([==[{body}]==], "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
{headers}
"""

FRESH_TEXTS = """-- written by bench/wrk.py: each request takes the next `per` texts of a file
-- of JSON strings; every wrk thread starts at its own offset, so concurrent requests differ
local texts = {{}}
for line in io.lines([==[{texts}]==]) do texts[#texts + 1] = line end
local started = 0
setup = function(thread)
  thread:set("offset", started * 7919)
  started = started + 1
end
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
{headers}
request = function()
  local parts = {{}}
  for i = 1, {per} do
    counter = counter + 1
    parts[i] = texts[((offset or 0) + counter) % #texts + 1]
  end
  return wrk.format(nil, nil, nil, '{prefix}' .. table.concat(parts, ",") .. ']}}')
end
"""

PERCENTILES = """
done = function(summary, latency, requests)
  io.write(string.format("PERCENTILES %d %d %d\\n",
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""
_SECONDS_PER = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_QUANTITY = r"([\d.]+)(us|ms|s|m|h)\b"
_SOCKET_ERRORS = r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"


def _headers(headers: dict[str, str]) -> str:
    return "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())


def same_body_script(folder: Path, name: str, body: bytes, headers: dict[str, str]) -> Path:
    (folder / f"{name}.json").write_bytes(body)
    script = folder / f"{name}.lua"
    text = SAME_BODY.format(body=folder / f"{name}.json", headers=_headers(headers))
    script.write_text(text + PERCENTILES)
    return script


def get_script(folder: Path, name: str) -> Path:
    """Plain GETs of the URL wrk is given."""
    script = folder / f"{name}.lua"
    script.write_text("-- written by bench/wrk.py: GET the URL" + PERCENTILES)
    return script


def fresh_texts_script(
    folder: Path, name: str, texts: list[str], per: int, fields: dict[str, str],
    headers: dict[str, str],
) -> Path:  # fmt: skip
    """Requests of `per` texts each, drawn in turn from `texts`, with the JSON `fields`."""
    (folder / f"{name}.texts").write_text("\n".join(json.dumps(t) for t in texts) + "\n")
    prefix = json.dumps(fields)[:-1] + ', "input": ['
    script = folder / f"{name}.lua"
    text = FRESH_TEXTS.format(
        texts=folder / f"{name}.texts", per=per, prefix=prefix.replace("'", "\\'"),
        headers=_headers(headers),
    )  # fmt: skip
    script.write_text(text + PERCENTILES)
    return script


def _seconds(number: str, unit: str) -> float:
    return float(number) * _SECONDS_PER[unit]


def parse(output: str) -> dict[str, float]:
    """Requests, seconds, 2xx answers per second, p50/p95/p99 (ms), non-2xx and socket
    errors. p95 and p99 come from the scripts' done() line, p50 from either."""
    done = re.search(rf"(\d+) requests in {_QUANTITY}", output)
    p50 = re.search(rf"^\s*50%\s+{_QUANTITY}", output, re.MULTILINE)
    if not done or not p50:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    count, seconds = int(done.group(1)), _seconds(done.group(2), done.group(3))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    non_2xx = int(bad.group(1)) if bad else 0
    sockets = re.search(_SOCKET_ERRORS, output)
    found = {
        "requests": count,
        "seconds": seconds,
        "ok_per_second": (count - non_2xx) / seconds,
        "p50_ms": 1000 * _seconds(p50.group(1), p50.group(2)),
        "non_2xx": non_2xx,
        "socket_errors": sum(int(n) for n in sockets.groups()) if sockets else 0,
    }
    if points := re.search(r"^PERCENTILES (\d+) (\d+) (\d+)$", output, re.MULTILINE):
        values = [int(v) / 1000 for v in points.groups()]
        found |= {"p50_ms": values[0], "p95_ms": values[1], "p99_ms": values[2]}
    return found


def run(url: str, script: Path, seconds: int, connections: int, threads: int) -> dict[str, float]:
    command = [
        "wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{seconds}s",
        "--latency", "--timeout", "10s", "-s", str(script), url,
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse(done.stdout)
