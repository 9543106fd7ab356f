"""Count the PostgreSQL connections one command holds while it runs: its peak, and per process.

    python deploy/measure_connections.py [--duration S] -- python -m search.run --storage postgresql://... --workers 4 ...

The command runs with PGAPPNAME set to a tag of its own, which libpq (psycopg) sends as the
application name, so only its connections (its worker processes' included) are counted in
pg_stat_activity, whatever else uses the server. Each connection is matched to its process by
its client port (`ss -tnp`). With --duration the command is sent SIGINT after S seconds (for the
dashboard, which never ends by itself). Reads the server from $MEASURE_POSTGRES
(default postgresql://postgres@127.0.0.1:5432/test).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import time
import uuid


def pids_by_port(server_port: int) -> dict[int, int]:
    out = subprocess.run(["ss", "-tnpH", "dst", f":{server_port}"], capture_output=True, text=True).stdout
    found = {}
    for line in out.splitlines():
        pid = re.search(r"pid=(\d+)", line)
        if pid:
            found[int(line.split()[3].rsplit(":", 1)[1])] = int(pid.group(1))
    return found


def main() -> int:
    import psycopg
    from sqlalchemy.engine import make_url

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=None, help="send SIGINT to the command after this many seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    server = os.environ.get("MEASURE_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    tag = f"measure-{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen(command, env=dict(os.environ, PGAPPNAME=tag))
    deadline = time.monotonic() + (args.duration if args.duration is not None else float("inf"))
    peak, peak_by_pid = 0, collections.Counter()
    with psycopg.connect(server, autocommit=True) as connection:
        while process.poll() is None:
            ports = [row[0] for row in connection.execute("select client_port from pg_stat_activity where application_name = %s", (tag,))]
            owners = pids_by_port(make_url(server).port or 5432)
            by_pid = collections.Counter(owners.get(port, -1) for port in ports)
            peak = max(peak, len(ports))
            for pid, count in by_pid.items():
                peak_by_pid[pid] = max(peak_by_pid[pid], count)
            if time.monotonic() > deadline:
                process.send_signal(signal.SIGINT)
            time.sleep(0.1)
    print(f"peak connections: {peak}; peak per process (pid {process.pid} is the command, -1 unmatched): {dict(peak_by_pid)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
