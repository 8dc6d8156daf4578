"""Is the network there? Quick probes, so offline runs fail fast instead of retrying."""
from __future__ import annotations

import concurrent.futures
import os
import socket
from urllib.parse import urlsplit

TFDS_HOSTS = ("download.tensorflow.org", "storage.googleapis.com")


def looks_offline(hosts=TFDS_HOSTS, timeout: float = 5.0) -> bool:
    """True when none of `hosts` resolves within `timeout` seconds."""
    def resolves(host):
        try:
            socket.getaddrinfo(host, 443)
            return True
        except OSError:
            return False

    pool = concurrent.futures.ThreadPoolExecutor(len(hosts))
    futures = [pool.submit(resolves, h) for h in hosts]
    try:
        return not any(f.result(timeout=timeout) for f in futures)
    except concurrent.futures.TimeoutError:
        return True
    finally:
        pool.shutdown(wait=False)


def reachable(url: str, timeout: float = 5.0) -> bool:
    """True when a TCP connection to `url`'s host opens within `timeout` seconds (or a proxy is set)."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                                        "ALL_PROXY", "all_proxy")):
        return True                         # the proxy decides; let the download say what happened
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
