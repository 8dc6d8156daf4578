"""Is the network there? A quick DNS probe, so offline runs fail fast instead of retrying."""
from __future__ import annotations

import concurrent.futures
import socket

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
