"""nginx as the reference reverse proxy of the benchmarks: a private config, one foreground worker.

nginx (Debian package ``nginx-light`` or ``nginx``) runs from a config written to a scratch
directory: master in the foreground, one worker, a keep-alive pool to the upstream, its pid file,
error log, temp paths and access log (the ``combined`` format, one line per request, like the
proxy's JSON request log) all in that directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from bench.services import Service, ready
from tests.support.ports import free_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

_CONFIG = """\
{user}daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log {dir}/access.log combined;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # The defaults (1,000) close a keep-alive connection every 1,000 requests; the proxy never
    # does, so neither may nginx under wrk.
    keepalive_requests 1000000;
    upstream sim {{
        server 127.0.0.1:{upstream};
        keepalive 32;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Stream large bodies through the in-memory buffers instead of spooling to disk.
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def start_nginx(upstream_port: int, workdir: Path, cpu: int | None = None) -> Service:
    """nginx (one worker, pinned to ``cpu``) in front of the upstream, listening on ``.port``.

    Its files live in ``workdir / "nginx"``; ``access.log`` there has a line per request.
    """
    if not Path(NGINX).exists():
        raise RuntimeError("nginx is the reference proxy: apt-get install nginx-light")
    home = workdir / "nginx"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # Started as root, the master would drop its worker to "nobody", who cannot enter a private
    # (0700) temporary directory to write the access log and temp files.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = home / "nginx.conf"
    conf.write_text(_CONFIG.format(user=user, dir=home, upstream=upstream_port, port=port))
    pin = ["taskset", "-c", str(cpu)] if cpu is not None and shutil.which("taskset") else []
    # -e: the error log before the config is read, else the compiled-in path (stderr or /var/log).
    with (home / "stderr.log").open("wb") as err:
        proc = subprocess.Popen(
            [*pin, NGINX, "-p", str(home), "-c", str(conf), "-e", str(home / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    service = Service(proc, port, log=home / "access.log")
    ready(service)
    return service


def worker_pid(master: Service, seconds: float = 5.0) -> int:
    """The pid of the master's one worker (the process that serves, and whose RSS and CPU count)."""
    children = Path(f"/proc/{master.pid}/task/{master.pid}/children")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pids = children.read_text().split()
        if pids:
            return int(pids[0])
        time.sleep(0.05)
    raise RuntimeError(f"nginx {master.pid} has no worker after {seconds:g}s")
