"""A `ray start --head` cluster on 127.0.0.1 for tests (test_cluster, test_s3)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ports import free_port, wait_for_port


class Head:
    """`ray start --head --block` on 127.0.0.1 with 2 CPUs (with `dashboard`, Ray's dashboard and its job server
    on a free port of 127.0.0.1, `dashboard_url`; `env` added to its environment: what a node's own environment
    holds, such as storage credentials); stop() sends SIGTERM to exactly that process, which takes its cluster
    down with it."""

    def __init__(self, logdir: Path, dashboard: bool = False, env: dict | None = None):
        self.logdir, self.proc, self.address, self.starts = logdir, None, "", 0
        self.dashboard, self.env, self.dashboard_url = dashboard, env or {}, ""

    def start(self) -> None:
        port, dash, agent = free_port(), free_port(), free_port()
        self.starts += 1
        self.log = open(self.logdir / f"ray_start_{self.starts}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             f"--port={port}", "--num-cpus=2", "--num-gpus=0", f"--include-dashboard={str(self.dashboard).lower()}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats",
             # the job server hands a job to its node's agent over HTTP, by default on port 52365, which another
             # Ray instance on this machine (another test's) may hold: then no agent takes jobs
             f"--dashboard-agent-listen-port={agent}"],
            stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **self.env})
        self.dashboard_url = f"http://127.0.0.1:{dash}" if self.dashboard else ""
        self.address = f"127.0.0.1:{port}"
        wait_for_port(dash if self.dashboard else port, self.proc, self.logdir / f"ray_start_{self.starts}.log",
                      timeout=60)
        time.sleep(3)  # the raylet registers shortly after the GCS port opens

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
